# Each arm's lr: the best held-out retain EM at forget EM 0.1 at tuning seed 10 (tuning/, summarise.py DIR tuning).
# Zeroth order forgets only as it wrecks the model (retain EM at forget EM 0.1: 0.178 and 0.400, the best of 6 lrs).
declare -A CHOSEN=(
  [simu_sophia]=2.5e-4 [fo_sophia]=1.25e-4
  [simu_adamw]=1.25e-4 [fo_adamw]=5e-4
  [simu_signsgd]=1.25e-4 [fo_signsgd]=2.5e-4
  [simu_sgd]=1e-2 [fo_sgd]=1e-2
  [simu_zo]=1e-2 [fo_zo]=3e-3
)
