# The second part's lrs, from the tuning runs at seed 10 (summarise.py DIR tuning / planted_tuning). The hybrid's
# "lr" is "<lr> method.optimizer.zo_lr=<zo_lr>": on the embedded default zo_lr = lr / 100 was best under both masks
# (simu 5e-4 / 5e-6: held-out retain EM 1.0; fo 1e-3 / 1e-5: 0.958, tied with zo_lr 1e-6), and zo_lr = lr wrecks
# the model first. fo_zosphere: 3e-3 and 3e-2 tie at 0.1; the smaller is taken. On the planted target every hybrid
# run ties at 1.0: AdamW's lr there (5e-5) with zo_lr = lr / 100, as on the default.
declare -A CHOSEN=(
  [simu_hybrid]="5e-4 method.optimizer.zo_lr=5e-6" [fo_hybrid]="1e-3 method.optimizer.zo_lr=1e-5"
  [simu_zosphere]=1e-2 [fo_zosphere]=3e-3
)
declare -A PLANTED_CHOSEN=(
  [simu_hybrid]="5e-5 method.optimizer.zo_lr=5e-7" [fo_hybrid]="5e-5 method.optimizer.zo_lr=5e-7"
  [simu_zosphere]=1e-3 [fo_zosphere]=3e-4
)
