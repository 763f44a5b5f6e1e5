"""One LightningModule per training stage (encoder, trunk, branch, finetune), sharing one model.

`base` holds what they share: the manual-optimisation training step, the data wrapper that keeps
the stream's exact position with each batch, the checkpointing callback and the Trainer factory.
"""
