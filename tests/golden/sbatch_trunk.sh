#!/bin/bash

# Parameters
#SBATCH --account=vlm
#SBATCH --array=0-4%5
#SBATCH --constraint=skylake
#SBATCH --cpus-per-task=8
#SBATCH --error=/ROOT/logs/%A_%a/%A_%a_0_log.err
#SBATCH --exclusive
#SBATCH --gpus-per-node=1
#SBATCH --job-name=golden.trunk
#SBATCH --mem=64GB
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --open-mode=append
#SBATCH --output=/ROOT/logs/%A_%a/%A_%a_0_log.out
#SBATCH --partition=gpu
#SBATCH --qos=normal
#SBATCH --signal=USR2@120
#SBATCH --time=1440
#SBATCH --wckey=vlmsweep

# setup
export PYTHONPATH=<SRC>${PYTHONPATH:+:$PYTHONPATH}

# command
export SUBMITIT_EXECUTOR=slurm
srun --unbuffered --output /ROOT/logs/%A_%a/%A_%a_%t_log.out --error /ROOT/logs/%A_%a/%A_%a_%t_log.err <PYTHON> -u -m submitit.core._submit <FOLDER>
