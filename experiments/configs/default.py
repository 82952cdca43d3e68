"""Default recipe: the small CNN on the embedded digits data (no download, minutes on a CPU).

The fields and their meaning are defined in the library (eos_jax.recipe.default_recipe);
every other config starts from this one and changes what differs.
"""

import ml_collections

from eos_jax import recipe


def get_config() -> ml_collections.ConfigDict:
    return recipe.default_recipe()
