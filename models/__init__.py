"""Everything that runs inside one step: configs and presets, the LM, vision encoder, projector and
VLM, the Lightning stages, LR schedules, data (built-in world, real-format readers, mixing),
evaluation, and FLOP/parameter accounting. Imports nothing from sweep, analysis or app.

Importing `models` is cheap (no torch); `models.run.run_step` is the entry point launchers call.
"""
