"""One LightningModule per training stage (encoder, trunk, branch, finetune), sharing one model.

What they share, one module per job: `module` (the manual-optimisation StageModule), `batches`
(tensors, DDP rows, micro-batches and the stream wrapper that keeps the stream's exact position
with each batch), `checkpointer` (the checkpoint/progress/preemption callback), `trainer` (the
Trainer factory and `fit`); `context` is what a runner gets and returns, `runners` and
`eval_step` run each kind of step.
"""
