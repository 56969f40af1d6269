# Sourced by the training launchers before their settings get defaults: it notes which ones the environment sets.
#
# A new run passes every setting to the trainer: the environment's value, else the launcher's default. A resumed
# run (RESUME=true, and OUT_DIR has a checkpoint) passes only the settings set in the environment; the trainer
# keeps the checkpoint's value of every other one (not the launcher's default, which is a new run's), and applies
# a given one that differs from the checkpoint's, saying so in one line ("resume: --max_steps 20000 -> 40000 ...").

declare -A FROM_ENV=()  # the variables the environment sets, to a value that is not empty
for _name in $(compgen -e); do
  if [ -n "${!_name:-}" ]; then FROM_ENV[$_name]=1; fi
done
unset _name

# resuming: whether this launch continues a run: RESUME is true (as the trainer's --resume reads it) and OUT_DIR
# holds a checkpoint (without one the trainer starts the run anew, which takes every setting).
resuming() {
  case "${RESUME,,}" in 1 | true | yes | on) ;; *) return 1 ;; esac
  compgen -G "$OUT_DIR/checkpoints/step_*[0-9]" > /dev/null  # not the step_*.tmp of a save cut short
}

SETTINGS=()  # the flags the settings give the trainer
# settings FLAG VARIABLE [FLAG VARIABLE ...]: add "FLAG $VARIABLE" to SETTINGS (when resuming, only the
# variables set in the environment), and say which ones a resumed run passes.
settings() {
  local given=()
  while [ "$#" -gt 0 ]; do
    if ! resuming || [ -n "${FROM_ENV[$2]:-}" ]; then
      SETTINGS+=("$1" "${!2}")
      given+=("$2")
    fi
    shift 2
  done
  if resuming; then
    echo "RESUME=true: the checkpoint's settings, but for those set in the environment: ${given[*]:-none}"
  fi
}

# auto_precision_flags: what PRECISION_FLAGS=auto stands for. On a GPU, "--amp_bf16 --allow_tf32" for a new run and
# "--allow_tf32" for a resumed one (which keeps the precision it was started with; TF32 is each launch's choice,
# not recorded); on the CPU, nothing (fp32).
auto_precision_flags() {
  if python -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
    if resuming; then echo "--allow_tf32"; else echo "--amp_bf16 --allow_tf32"; fi
  fi
}
