"""Checkpoints restore bit-exactly, and refuse (naming the file) what they cannot verify."""

import numpy as np
import pytest

from eos_jax import bits
from eos_jax.training.checkpoint import Checkpointer, CheckpointError


def state(seed=0):
    rng = np.random.default_rng(seed)
    return {"w": rng.standard_normal(4096).astype(np.float32), "step": np.array(seed, np.int32)}


@pytest.fixture
def saved(tmp_path):
    ckpt = Checkpointer(str(tmp_path / "checkpoints"))
    ckpt.save(1, state(1))
    ckpt.save(2, state(2))
    yield ckpt
    ckpt.close()


def test_restores_the_latest_bit_exactly(saved):
    assert saved.latest_step() == 2
    assert bits.tree_hash(saved.restore(state())) == bits.tree_hash(state(2))
    assert bits.tree_hash(saved.restore(state(), step=1)) == bits.tree_hash(state(1))


def test_missing_hashes_file_is_refused_naming_it(saved, tmp_path):
    (tmp_path / "checkpoints" / "hashes.json").unlink()
    with pytest.raises(CheckpointError, match="hashes.json is missing") as err:
        saved.restore(state())
    assert str(tmp_path / "checkpoints" / "hashes.json") in str(err.value)
    assert "\n" not in str(err.value)


def test_damaged_hashes_file_is_an_error_naming_it(saved, tmp_path):
    path = tmp_path / "checkpoints" / "hashes.json"
    path.write_text(path.read_text()[:-5])
    with pytest.raises(CheckpointError, match="cannot read") as err:
        saved.restore(state())
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_checkpoint_without_its_hash_is_refused(saved, tmp_path):
    path = tmp_path / "checkpoints" / "hashes.json"
    path.write_text('{"1": "0"}')
    with pytest.raises(CheckpointError, match="no hash") as err:
        saved.restore(state())
    assert str(tmp_path / "checkpoints" / "2") in str(err.value)


def test_flipped_byte_in_an_array_file_is_refused(saved, tmp_path):
    step_dir = tmp_path / "checkpoints" / "2"
    biggest = max((p for p in step_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(biggest.read_bytes())
    data[len(data) // 2] ^= 0x01
    biggest.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checkpoint step 2") as err:
        saved.restore(state())
    assert str(step_dir) in str(err.value)
