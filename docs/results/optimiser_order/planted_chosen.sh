# The planted target's lr per arm, from planted_tuning/ (seed 10). Every arm but zeroth order keeps held-out
# retain EM 1.0 at forget EM 0.1 at every lr of its grid, so the objective ties: ties go to the grid's middle lr.
declare -A CHOSEN=(
  [simu_sophia]=5e-5 [fo_sophia]=5e-5
  [simu_adamw]=5e-5 [fo_adamw]=5e-5
  [simu_signsgd]=5e-5 [fo_signsgd]=5e-5
  [simu_sgd]=1e-2 [fo_sgd]=1e-2
  [simu_zo]=1e-3 [fo_zo]=1e-3
)
