"""Meta-training with the task batch split over 8 (fake CPU) devices gives the one-device result.

XLA fixes the number of host devices when JAX starts, so the multi-device checks run
in a child process started with ``--xla_force_host_platform_device_count=8``; the
batch in chunks of tasks over the devices runs in one of its own, in CI's full run
only (tests/conftest.py's ``SLOW``).
"""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

CHILD = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np
    from l2l_jax.errors import ConfigError
    from l2l_jax.meta import MetaTrainConfig, init_inner, meta_train
    from l2l_jax.meta import sharding as sh
    from l2l_jax.optimizers import lstm
    from l2l_jax.tasks import QuadraticFamily

    # What to check: "batch" (the task batch split over the devices, and refusals), "chunks" (in chunks of tasks).
    PARTS = sys.argv[1:]
    out = {"devices": len(jax.devices())}
    config = MetaTrainConfig(task="quadratic", task_options={"dim": 5}, num_meta_steps=4, horizon=10,
                             truncation=5, batch_size=8, meta_lr=1e-2, validate_every=2, num_val_tasks=8,
                             checkpoint_every=4)
    def summary(config, devices):
        r = meta_train(config, progress=False, devices=devices)
        return {"phi": [np.asarray(x).tolist() for x in jax.tree.leaves(r.meta_params)],
                "losses": [h["meta_loss"] for h in r.history],
                "val": [h["val_loss"] for h in r.history if "val_loss" in h]}

    def refusal(config):
        try:
            meta_train(config, progress=False, devices=8)
        except ConfigError as e:
            return str(e)
        return None

    if "batch" in PARTS:
        mesh = sh.task_mesh()
        opt, fam = lstm(), QuadraticFamily(dim=5)
        inner = sh.shard_tasks(init_inner(opt, opt.init(jax.random.key(0)), fam, jax.random.key(1), 16), mesh)
        leaf = inner.params
        out["placed_on"] = len(leaf.sharding.device_set)
        out["shard_rows"] = sorted({s.data.shape[0] for s in leaf.addressable_shards})
        out["runs"] = {name: summary(config, devices) for name, devices in (("one", 1), ("eight", 8), ("auto", None))}
        out["uneven"] = refusal(MetaTrainConfig(**{**config.to_dict(), "batch_size": 6}))
        out["uneven_chunk"] = refusal(MetaTrainConfig(**{**config.to_dict(), "tasks_per_chunk": 4}))
    if "chunks" in PARTS:
        # 16 tasks in 2 chunks of 8, each chunk split over the 8 devices, against one device.
        chunked = MetaTrainConfig(**{**config.to_dict(), "batch_size": 16, "tasks_per_chunk": 8})
        out["chunked"] = {name: summary(chunked, devices) for name, devices in (("one", 1), ("eight", 8))}
    print("RESULT" + json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def child(fake_devices):
    return fake_devices(CHILD, 8, "batch")


@pytest.fixture(scope="module")
def chunks_child(fake_devices):
    return fake_devices(CHILD, 8, "chunks")


def test_the_child_sees_eight_devices_and_splits_tasks_evenly(child):
    assert child["devices"] == 8
    assert child["placed_on"] == 8
    assert child["shard_rows"] == [2]  # 16 tasks, 2 per device


def _close(a, b, rtol=1e-5, atol=1e-6):
    for x, y in zip(a, b):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


@pytest.mark.parametrize("name", ["eight", "auto"])
def test_sharded_meta_training_matches_one_device(child, name):
    one, other = child["runs"]["one"], child["runs"][name]
    _close(other["losses"], one["losses"])
    _close(other["val"], one["val"])
    assert len(other["val"]) == 2
    _close(other["phi"], one["phi"])


def test_sharded_meta_training_in_chunks_of_tasks_matches_one_device(chunks_child):
    assert chunks_child["devices"] == 8
    one, eight = chunks_child["chunked"]["one"], chunks_child["chunked"]["eight"]
    _close(eight["losses"], one["losses"])
    _close(eight["val"], one["val"])
    _close(eight["phi"], one["phi"])


def test_a_batch_that_does_not_split_evenly_is_refused_with_advice(child):
    assert child["uneven"] is not None
    assert "6 tasks cannot be split evenly over 8 devices" in child["uneven"]


def test_a_chunk_of_tasks_that_does_not_split_evenly_is_refused_with_advice(child):
    assert child["uneven_chunk"] is not None
    assert "tasks_per_chunk=4 tasks cannot be split evenly over 8 devices" in child["uneven_chunk"]
