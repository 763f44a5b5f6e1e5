"""Export a trained step's language model as a Hugging Face `LlamaForCausalLM` folder, with its
tokenizer, and a VLM's encoder and projector beside it.

Our LM is Llama-shaped (pre-norm RMSNorm, SwiGLU, untied, no biases) except for one layout
detail: RoPE rotates interleaved channel pairs (2i, 2i+1), where Hugging Face's `rotate_half`
pairs channel i with i + head_dim/2. Permuting the output rows of each head's q and k weights
(evens first, then odds) makes the two equal, as Meta's Llama conversion does; attention scores
are unchanged because q and k move together. Layout of one export:

    config.json, model.safetensors, generation_config.json   the LM (LlamaForCausalLM)
    tokenizer.json, tokenizer_config.json, ...               PreTrainedTokenizerFast
    vision/   (branch, finetune) the encoder: a transformers folder (vision kind hf), else
              vlmsweep's own weights (model.safetensors) and vision.json
    projector/ model.safetensors (mlp2 as LLaVA's linear_1/linear_2) and projector.json
    vlmsweep_export.json                                     the step, its axes, what is where
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from models import stepfiles as sf

MANIFEST = "vlmsweep_export.json"
LM_KINDS = ("trunk", "branch", "finetune")


class ExportError(ValueError):
    """A step that cannot be exported; the message names the step directory and why."""


def _require_transformers() -> None:
    try:
        import safetensors  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        raise ExportError(f"export needs transformers and safetensors ({exc.name} is missing): "
                          "pip install 'vlmsweep[hf]'") from None


def rope_permutation(head_dim: int) -> list[int]:
    """Row order within one head that turns interleaved RoPE pairs into rotate_half's halves."""
    return list(range(0, head_dim, 2)) + list(range(1, head_dim, 2))


def llama_state(state: dict[str, Any], lm: Any) -> dict[str, Any]:
    """Our LM's weights (keys under `lm.` of a VLM state dict) under LlamaForCausalLM's names."""
    import torch

    order = torch.tensor(rope_permutation(lm.head_dim))

    def rope_rows(w: torch.Tensor) -> torch.Tensor:
        return w.view(lm.n_heads, lm.head_dim, -1)[:, order].reshape(w.shape)

    out = {"model.embed_tokens.weight": state["lm.embed.weight"], "model.norm.weight": state["lm.norm.weight"]}
    if not lm.tie_embeddings:
        out["lm_head.weight"] = state["lm.head.weight"]
    for i in range(lm.n_layers):
        ours, theirs = f"lm.blocks.{i}.", f"model.layers.{i}."
        out |= {theirs + "input_layernorm.weight": state[ours + "attn_norm.weight"],
                theirs + "post_attention_layernorm.weight": state[ours + "ffn_norm.weight"],
                theirs + "self_attn.q_proj.weight": rope_rows(state[ours + "attn.wq.weight"]),
                theirs + "self_attn.k_proj.weight": rope_rows(state[ours + "attn.wk.weight"]),
                theirs + "self_attn.v_proj.weight": state[ours + "attn.wv.weight"],
                theirs + "self_attn.o_proj.weight": state[ours + "attn.wo.weight"],
                theirs + "mlp.gate_proj.weight": state[ours + "ffn.w1.weight"],
                theirs + "mlp.up_proj.weight": state[ours + "ffn.w3.weight"],
                theirs + "mlp.down_proj.weight": state[ours + "ffn.w2.weight"]}
    return {k: v.detach().float().contiguous() for k, v in out.items()}


def llama_config(lm: Any, tok: Any) -> Any:
    from transformers import LlamaConfig

    rope = {"rope_type": "default", "rope_theta": lm.rope_theta}
    fields = getattr(LlamaConfig, "__dataclass_fields__", {}) or LlamaConfig.__init__.__code__.co_varnames
    rope_kw = {"rope_parameters": rope} if "rope_parameters" in fields else {"rope_theta": lm.rope_theta}
    # No BOS in our data: documents are EOS-separated, so EOS is what precedes a document.
    return LlamaConfig(vocab_size=lm.vocab_size, hidden_size=lm.d_model, intermediate_size=lm.ffn_dim,
                       num_hidden_layers=lm.n_layers, num_attention_heads=lm.n_heads,
                       num_key_value_heads=lm.n_heads, head_dim=lm.head_dim, hidden_act="silu",
                       max_position_embeddings=lm.max_seq_len, rms_norm_eps=lm.norm_eps,
                       tie_word_embeddings=lm.tie_embeddings, attention_bias=False, mlp_bias=False,
                       bos_token_id=tok.eos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id,
                       torch_dtype="float32", **rope_kw)


def _check_llama_shaped(lm: Any, where: Path) -> None:
    for option in ("qk_norm",):
        if getattr(lm, option, False):
            raise ExportError(f"{where}: the LM uses {option}, which LlamaForCausalLM has no place "
                              f"for; a step trained with {option} cannot be exported as Llama")


def _save_tokenizer(tok: Any, source: Any, folder: Path) -> None:
    """The step's tokenizer as a PreTrainedTokenizerFast: the world's word-level one rebuilt as a
    tokenizer.json, or the study's own tokenizer.json with the specials we appended to it."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from models.data.tokenizer import WordTokenizer

    if isinstance(tok, WordTokenizer):
        backend = Tokenizer.from_str(json.dumps(tok.hf_json()))
    else:
        backend = Tokenizer.from_file(source.option("tokenizer"))
        base = backend.get_vocab_size(with_added_tokens=True)
        extra = [name for _, name in sorted(tok._extra.items())]
        if extra and backend.add_special_tokens(extra) and backend.token_to_id(extra[0]) != base:
            raise ExportError(f"{source.option('tokenizer')}: cannot append {extra} at id {base}")
    names = {"eos_token": tok.eos_id, "bos_token": tok.eos_id, "pad_token": tok.pad_id}
    special = {key: backend.id_to_token(i) for key, i in names.items()}
    if isinstance(tok, WordTokenizer):
        special["unk_token"] = backend.id_to_token(tok.unk_id)
    PreTrainedTokenizerFast(tokenizer_object=backend, clean_up_tokenization_spaces=False,
                            **special).save_pretrained(folder)


def _save_hf_encoder(trained: Any, source: Path, folder: Path) -> None:
    """The encoder as its own transformers folder: the source's model class and preprocessor,
    with the weights as this step left them (an unfrozen encoder was trained)."""
    from transformers import AutoModel

    fresh = AutoModel.from_pretrained(source, local_files_only=True)
    getattr(fresh, "vision_model", fresh).load_state_dict(trained.state_dict())
    fresh.save_pretrained(folder)
    for name in ("preprocessor_config.json",):
        if (source / name).is_file():
            shutil.copy2(source / name, folder / name)


def _save_vision_side(model: Any, vision: Any, projector: Any, folder: Path) -> dict[str, Any]:
    """vision/ and projector/ of a VLM export; returns their manifest entries."""
    from safetensors.torch import save_file

    def tensors(module: Any) -> dict[str, Any]:
        return {k: v.detach().float().contiguous() for k, v in module.state_dict().items()}

    (folder / "vision").mkdir()
    if vision.kind == "hf":
        _save_hf_encoder(model.vision.model, Path(vision.hf_path), folder / "vision")
        vision_layout = "transformers folder (AutoModel), features = last_hidden_state"
    else:
        save_file(tensors(model.vision), str(folder / "vision" / "model.safetensors"))
        vision_layout = f"vlmsweep {vision.kind} encoder (models.vision), weights by its module names"
    (folder / "vision" / "vision.json").write_text(json.dumps(dataclasses.asdict(vision), indent=2))
    (folder / "projector").mkdir()
    weights = tensors(model.projector)
    llava = projector.kind == "mlp2" and projector.pixel_shuffle == 1
    if llava:  # LLaVA's multi_modal_projector names: linear_1, GELU, linear_2
        weights = {k.replace("0.", "linear_1.", 1) if k.startswith("0.") else k.replace("2.", "linear_2.", 1): v
                   for k, v in weights.items()}
    save_file(weights, str(folder / "projector" / "model.safetensors"))
    (folder / "projector" / "projector.json").write_text(json.dumps(dataclasses.asdict(projector), indent=2))
    return {"vision": {"path": "vision", "kind": vision.kind, "layout": vision_layout,
                       "image_size": vision.image_size, "frozen": vision.frozen},
            "projector": {"path": "projector", "kind": projector.kind,
                          "names": "llava (linear_1, linear_2)" if llava else "vlmsweep (models.projector)"}}


def step_location(step_dir: Path) -> tuple[Path, str, str]:
    """(root, kind, step_id) of <root>/steps/<kind>/<step_id>; an ExportError for anything else."""
    step_dir = step_dir.resolve()
    if step_dir.parent.parent.name != sf.STEPS_DIR or not (step_dir / sf.CONFIG).is_file():
        raise ExportError(f"{step_dir}: not a step directory (<root>/{sf.STEPS_DIR}/<kind>/<step_id> "
                          f"with a {sf.CONFIG})")
    kind = step_dir.parent.name
    if kind not in LM_KINDS:
        raise ExportError(f"{step_dir}: a {kind} step has no language model to export "
                          f"(export one of: {', '.join(LM_KINDS)})")
    return step_dir.parents[2], kind, step_dir.name


def export_step(root: Path, kind: str, step_id: str, out: Path) -> dict[str, Any]:
    """Write step `step_id`'s model to the new folder `out` (all or nothing); its manifest."""
    _require_transformers()
    out = Path(out).resolve()
    if out.exists():
        raise ExportError(f"{out}: already exists; choose a new --out folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        manifest = _write_step(root, kind, step_id, tmp)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _write_step(root: Path, kind: str, step_id: str, folder: Path) -> dict[str, Any]:
    import torch
    from safetensors.torch import save_file
    from transformers import GenerationConfig, LlamaForCausalLM

    import models.data as data
    from models import checkpoint as ck
    from models.stages.eval_step import model_spec
    from models.vlm import VLM

    paths = sf.step_paths(root, kind, step_id)
    result = sf.read_result(paths.dir)
    if result is None or not paths.weights.is_file():
        raise ExportError(f"{paths.dir}: the {kind} step is not done (no {sf.RESULT} or {sf.WEIGHTS})")
    lm, vision, projector, trunk = model_spec(root, kind, step_id)
    _check_llama_shaped(lm, paths.dir)
    tok = data.get_tokenizer(trunk.data)
    if tok.vocab_size > lm.vocab_size:
        raise ExportError(f"{paths.dir}: tokenizer has {tok.vocab_size} tokens but the LM {lm.vocab_size} rows")
    model = VLM(lm, vision, projector)
    model.load_state_dict(ck.load_torch(paths.weights)["model"])
    config = llama_config(lm, tok)
    weights = llama_state(model.state_dict(), lm)
    with torch.device("meta"):  # the names and shapes transformers expects, without the memory
        expected = {k: tuple(v.shape) for k, v in LlamaForCausalLM(config).state_dict().items()}
    if lm.tie_embeddings:
        expected.pop("lm_head.weight", None)
    got = {k: tuple(v.shape) for k, v in weights.items()}
    if got != expected:
        raise ExportError(f"{paths.dir}: weights do not map onto LlamaForCausalLM "
                          f"({sorted(set(got) ^ set(expected))[:3] or 'shapes differ'})")
    config.save_pretrained(folder)
    GenerationConfig(bos_token_id=tok.eos_id, eos_token_id=tok.eos_id,
                     pad_token_id=tok.pad_id).save_pretrained(folder)
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    _save_tokenizer(tok, trunk.data, folder)
    config_json = sf.read_json(paths.config)
    manifest: dict[str, Any] = {
        "step_id": step_id, "kind": kind, "parents": config_json.get("parents", []),
        "axes": {k: v for k, v in config_json.get("meta", {}).items()
                 if k not in ("logging", "run", "checkpoint_fractions")},
        "language_model": {"class": "LlamaForCausalLM", "path": ".", "rope": "permuted to rotate_half"},
        "tokenizer": {"class": "PreTrainedTokenizerFast", "eos_id": tok.eos_id, "pad_id": tok.pad_id,
                      "image_id": tok.image_id, "user_id": tok.user_id, "assistant_id": tok.assistant_id}}
    if vision is not None:
        manifest |= _save_vision_side(model, vision, projector, folder)
        manifest["image_tokens"] = projector.image_tokens(vision.n_patches)
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def export_steps(root: Path, steps: list[tuple[str, str, dict[str, Any]]], out: Path) -> list[dict[str, Any]]:
    """Several steps, each `(kind, step_id, cell axes)`, into `out/<step_id>/` with `out/index.json`
    listing them; all or nothing. Every step is checked before anything is written."""
    _require_transformers()
    out = Path(out).resolve()
    if out.exists():
        raise ExportError(f"{out}: already exists; choose a new --out folder")
    for kind, step_id, _ in steps:
        paths = sf.step_paths(root, kind, step_id)
        if sf.read_result(paths.dir) is None or not paths.weights.is_file():
            raise ExportError(f"{paths.dir}: the {kind} step is not done (no {sf.RESULT} or {sf.WEIGHTS}); "
                              "run the study first")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        index = []
        for kind, step_id, cells in steps:
            (tmp / step_id).mkdir()
            manifest = _write_step(root, kind, step_id, tmp / step_id)
            index.append({"step_id": step_id, "kind": kind, "path": step_id, "cells": cells,
                          "axes": manifest["axes"]})
        (tmp / "index.json").write_text(json.dumps({"root": str(root), "steps": index}, indent=2) + "\n")
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return index
