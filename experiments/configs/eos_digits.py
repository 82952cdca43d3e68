"""Edge of Stability on the embedded digits: fc-tanh MLP, MSE, full-batch gradient descent on
the first 1,000 training digits (a fixed subset; batch = subset, so one fixed order).

  python -m experiments.eos --config=experiments/configs/eos_digits.py:plateau --workdir=...

The part after ':' picks the sweep (docs/eos.md has the numbers they printed):
  plateau       GD at 2/lr = 30, 40, 50, 60 (initial sharpness ~21): sharpening, then 2/lr
  weight_decay  coupled L2 at 2/lr = 10: the prediction is 2/lr - wd
  momentum      heavy ball (2+2mu)/lr and Nesterov (2+2mu)/((1+2mu) lr), all at 40
  depth         1, 2, 3 hidden layers and widths 100, 400 at 2/lr = 40
"""

import ml_collections

from eos_jax.studies import eos
from experiments.configs import default


def _runs(*runs: tuple[float, int, str]) -> tuple[str, ...]:
    """(lr, steps, extra overrides) -> the eos.runs strings."""
    return tuple(f"optimizer.lr={lr!r} num_steps={n} {extra}".strip() for lr, n, extra in runs)


def get_config(experiment: str = "plateau") -> ml_collections.ConfigDict:
    c = default.get_config()
    c.model = "mlp"
    c.model_kwargs = ml_collections.ConfigDict({"hidden": (200, 200)})
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
        c.eos.runs = _runs(
            (2 / 30, 1200, ""), (2 / 40, 2000, ""), (2 / 50, 3000, ""), (2 / 60, 5500, "")
        )
    elif experiment == "weight_decay":
        c.eos.runs = _runs(*((2 / 10, 1500, f"optimizer.weight_decay={wd}") for wd in WDS))
        c.eos.sharpness_every_steps = 25  # odd: both phases of the period-2 oscillation
    elif experiment == "momentum":
        c.eos.runs = _runs(
            (3.0 / 40, 2000, "optimizer.momentum=0.5"),
            (3.8 / 40, 2000, "optimizer.momentum=0.9"),
            (3.0 / 2.0 / 40, 2000, "optimizer.momentum=0.5 optimizer.nesterov=True"),
            (3.8 / 2.8 / 40, 2000, "optimizer.momentum=0.9 optimizer.nesterov=True"),
        )
    elif experiment == "depth":
        c.eos.runs = _runs(
            *(
                (2 / 40, 2000, f"model_kwargs.hidden={hidden!r}".replace(" ", ""))
                for hidden in ((200,), (200, 200), (200, 200, 200), (100, 100), (400, 400))
            )
        )
    return c


WDS = (0.0, 0.01, 0.05, 0.1)
