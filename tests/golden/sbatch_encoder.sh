#!/bin/bash

# Parameters
#SBATCH --account=vlm
#SBATCH --array=0-4%5
#SBATCH --constraint=skylake
#SBATCH --cpus-per-task=4
#SBATCH --error=/ROOT/logs/%A_%a/%A_%a_0_log.err
#SBATCH --exclusive
#SBATCH --job-name=golden.encoder
#SBATCH --mem=16GB
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --open-mode=append
#SBATCH --output=/ROOT/logs/%A_%a/%A_%a_0_log.out
#SBATCH --partition=cpu
#SBATCH --qos=normal
#SBATCH --signal=USR2@120
#SBATCH --time=120
#SBATCH --wckey=vlmsweep

# setup
export PYTHONPATH=<SRC>${PYTHONPATH:+:$PYTHONPATH}

# command
export SUBMITIT_EXECUTOR=slurm
srun --unbuffered --output /ROOT/logs/%A_%a/%A_%a_%t_log.out --error /ROOT/logs/%A_%a/%A_%a_%t_log.err <PYTHON> -u -m submitit.core._submit <FOLDER>
