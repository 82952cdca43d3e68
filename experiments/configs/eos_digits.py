"""Edge of Stability on the embedded digits: fc-tanh MLP, MSE, full-batch gradient descent on
the first 1,000 training digits (a fixed subset; batch = subset, so one fixed order).

  python -m experiments.eos --config=experiments/configs/eos_digits.py:plateau --workdir=...

The part after ':' picks the sweep (docs/eos.md has the numbers they printed):
  plateau       GD at 2/lr = 30, 40, 50, 60 (initial sharpness ~21): sharpening, then 2/lr
  weight_decay  coupled L2 on a grid (2/lr = 40, 20, 10; decays shifting the predicted
                threshold 2/lr - wd by 0-30% of 2/lr) and at lrs chosen after the decay
                (from the probe); a phase diagram (phases.png) of where each run
                settles, measured at the midpoint of the last two iterates
  weight_decay_edge  the lr chosen after each decay that does not collapse the net (0.01,
                0.03, 0.1) so that 2/lr - wd is 2-10% below S(wd), and three of
                weight_decay's far-past runs (the irregular region); each run's orbit
                period and phase (which prediction the centre's curvature matches)
  weight_decay_bn  the same net with BatchNorm before each tanh, wd = 0, 0.4, 2 at 2/lr = 40
  weight_decay_probe  the same decays at a small lr (2/lr = 200, stable): the sharpness
                that training with each decay reaches when nothing limits it
  momentum      heavy ball (2+2mu)/lr and Nesterov (2+2mu)/((1+2mu) lr), all at 40
  depth         1, 2, 3 hidden layers and widths 100, 400 at 2/lr = 40
  adam          full-batch Adam (beta1 0.9): the preconditioned sharpness against 38/lr at
                three lrs, and at one lr with eps 1e-4 and without bias correction
  adamw         full-batch AdamW: decoupled decays that lower the threshold
                (2 - lr wd)(1 + beta1) / ((1 - beta1) lr) by lr wd / 2 = 0-20% of 38/lr
"""

import ml_collections

from eos_jax.studies import eos
from experiments.configs import default


def sweep_runs(*runs: tuple[float, int, str]) -> tuple[str, ...]:
    """(lr, steps, extra overrides) -> the eos.runs strings."""
    return tuple(f"optimizer.lr={lr!r} num_steps={n} {extra}".strip() for lr, n, extra in runs)


def get_config(experiment: str = "plateau") -> ml_collections.ConfigDict:
    c = default.get_config()
    c.model = "mlp"
    c.model_kwargs = ml_collections.ConfigDict({"hidden": (200, 200), "use_batch_norm": False})
    c.train_subset = 1000
    c.batch_size = 1000  # full batch
    c.loss = "mse"
    c.optimizer.update(lr=2 / 40, momentum=0.0, nesterov=False, weight_decay=0.0, decay_epochs=())
    c.num_steps = 2000
    c.log_every_steps = 50
    c.eval_every_steps = 500
    c.checkpoint_every_steps = 1000
    c.eos = eos.default_settings(experiment)
    if experiment == "plateau":
        # a run is long enough that its last half is at the edge (reached by ~ half-time)
        c.eos.runs = sweep_runs(
            (2 / 30, 1200, ""), (2 / 40, 2000, ""), (2 / 50, 3000, ""), (2 / 60, 5500, "")
        )
    elif experiment == "weight_decay":
        # A grid: wd = shift * c / lr moves the threshold c/lr - wd by `shift` of c/lr ...
        grid = [
            (lr, 1500, f"optimizer.weight_decay={round(shift * 2 / lr, 6)!r}")
            for lr in (2 / 40, 2 / 20, 2 / 10)
            for shift in SHIFTS
        ]
        # ... and the lr chosen after the decay: the threshold c/lr - wd put at 1/1.5 and
        # 1/3 of the sharpness S(wd) that stable training with that decay reaches (the
        # probe), so the run must reach the edge if the prediction holds. These lrs put
        # 2/lr below the initial sharpness (21): started there, every one diverged; a
        # linear warm-up over the first 1,000 steps lets the decay and the edge meet first.
        chosen = [
            (
                2 / (sharpness / f + wd),
                3000,
                f"optimizer.weight_decay={wd!r} optimizer.warmup_steps=1000",
            )
            for wd, sharpness in PROBE_SHARPNESS.items()
            for f in (1.5, 3.0)
        ]
        c.eos.runs = sweep_runs(*grid, *chosen)
        c.eos.sharpness_every_steps = 25
        c.eos.midpoint = True  # the orbit's centre: the iterate flips across it at the edge
        c.eos.edge_every_steps = 100
    elif experiment == "weight_decay_edge":
        # 2/lr - wd just below S(wd) (period-two orbits), then far past it (irregular)
        edge = [(wd, s * f) for wd, s in PROBE_SHARPNESS.items() for f in EDGE_FRACTIONS]
        past = [(0.03, PROBE_SHARPNESS[0.03] / f) for f in (1.5, 3.0)]
        past.append((0.1, PROBE_SHARPNESS[0.1] / 1.5))
        c.eos.runs = sweep_runs(
            *(
                (2 / (t + wd), 3000, f"optimizer.weight_decay={wd!r} optimizer.warmup_steps=1000")
                for wd, t in edge + past
            )
        )
        c.eos.midpoint = True
        c.eos.edge_every_steps = 200
        c.eos.regions_every_steps = 0
        c.eos.orbit_window = 256
    elif experiment == "weight_decay_bn":
        # BatchNorm before each tanh makes the hidden weights scale-invariant
        c.eos.runs = sweep_runs(
            *(
                (2 / 40, 1500, f"model_kwargs.use_batch_norm=True optimizer.weight_decay={wd}")
                for wd in (0.0, 0.4, 2.0)
            )
        )
        c.eos.sharpness_every_steps = 25
        c.eos.midpoint = True
        c.eos.regions_every_steps = 0  # its activations take BatchNorm outputs
    elif experiment == "weight_decay_probe":
        c.eos.runs = sweep_runs(*((2 / 200, 5000, f"optimizer.weight_decay={wd}") for wd in WDS))
        c.eos.sharpness_every_steps = 250
    elif experiment == "momentum":
        c.eos.runs = sweep_runs(
            (3.0 / 40, 2000, "optimizer.momentum=0.5"),
            (3.8 / 40, 2000, "optimizer.momentum=0.9"),
            (3.0 / 2.0 / 40, 2000, "optimizer.momentum=0.5 optimizer.nesterov=True"),
            (3.8 / 2.8 / 40, 2000, "optimizer.momentum=0.9 optimizer.nesterov=True"),
        )
    elif experiment == "adam":
        c.optimizer.update(name="adam", momentum=0.0, beta1=0.9, beta2=0.999, eps=1e-8)
        c.eos.runs = sweep_runs(
            *((lr, 1500, "") for lr in ADAM_LRS),
            (ADAM_LRS[1], 1500, "optimizer.eps=0.0001"),
            (ADAM_LRS[1], 1500, "optimizer.bias_correction=False"),
        )
        c.eos.edge_every_steps = 100
        c.eos.regions_every_steps = 0
    elif experiment == "adamw":
        c.optimizer.update(name="adamw", momentum=0.0, beta1=0.9, beta2=0.999, eps=1e-8)
        c.eos.runs = sweep_runs(
            *((lr, 3000, f"optimizer.weight_decay={wd!r}") for lr, wd in ADAMW_RUNS)
        )
        c.eos.regions_every_steps = 0
    elif experiment == "depth":
        c.eos.runs = sweep_runs(
            *(
                (2 / 40, 2000, f"model_kwargs.hidden={hidden!r}".replace(" ", ""))
                for hidden in ((200,), (200, 200), (200, 200, 200), (100, 100), (400, 400))
            )
        )
    return c


SHIFTS = (0.0, 0.01, 0.05, 0.1, 0.2, 0.3)  # lr wd / 2: the decay's share of 2/lr
WDS = (0.0, 0.01, 0.03, 0.1, 0.3, 0.5, 1.0, 2.0, 4.0, 8.0)  # the probe's decays
# S(wd): the plateaus that `:weight_decay_probe` printed (docs/eos.md); decays of 0.3 and
# more collapse the net to sharpness 1 at any lr, so no lr can put the edge below them
PROBE_SHARPNESS = {0.01: 23.2, 0.03: 7.32, 0.1: 2.51}
ADAM_LRS = (4e-4, 1e-3, 2.5e-3)  # adam: 38/lr = 95,000, 38,000, 15,200
# adamw: (lr, wd), shifts lr wd / 2 of 0, 5, 10, 15, 20% at lr 0.01 and 0, 10% at 0.005
ADAMW_RUNS = ((0.01, 0.0), (0.01, 10.0), (0.01, 20.0), (0.01, 30.0), (0.01, 40.0))
ADAMW_RUNS += ((0.005, 0.0), (0.005, 40.0))
# weight_decay_edge: 2/lr - wd at these fractions of S(wd)
EDGE_FRACTIONS = (0.9, 0.94, 0.98)
