"""Range and key checks on the real composed config."""

import pytest

from hpcjobs.config import schema
from hpcjobs.errors import ConfigError


@pytest.mark.parametrize(
    "override, message",
    [
        ("optimizer.lr=-0.1", "optimizer.lr=-0.1: must be > 0"),
        ("optimizer.lr=0", "optimizer.lr=0.0: must be > 0"),
        ("trainer.epochs=0", "trainer.epochs=0: must be >= 1"),
        ("trainer.batch_size=0", "trainer.batch_size=0: must be >= 1"),
        ("trainer.precision=fp16", "trainer.precision=fp16: valid choices: auto, bf16, fp32"),
        ("trainer.device=tpu", "trainer.device=tpu: valid choices: auto, cpu, cuda"),
        ("data.augment.zoom=1.5", "data.augment.zoom=1.5: must be < 1"),
        ("data.val_fraction=0", "data.val_fraction=0.0: must be > 0"),
        ("model.channels=[]", "model.channels=[]: must be a non-empty list"),
        ("data.image_size=16", None),
    ],
)
def test_validate_names_the_bad_value_and_the_rule(compose_run, override, message):
    cfg = compose_run(override)
    if message is None:
        schema.validate(cfg)
        return
    with pytest.raises(ConfigError) as excinfo:
        schema.validate(cfg)
    assert message in str(excinfo.value)


def test_image_size_must_survive_every_pooling_block(compose_run):
    cfg = compose_run("model.channels=[8,8,8,8]", "data=digits")
    with pytest.raises(ConfigError, match="4 pooling blocks need images of at least 16x16"):
        schema.validate(cfg)


def test_imagefolder_without_root_is_rejected(compose_run):
    with pytest.raises(ConfigError, match=r"data.root is not set"):
        schema.validate(compose_run("data=imagefolder"))


def test_unknown_key_lists_valid_keys(compose_run):
    cfg = compose_run()
    message = schema.unknown_key(cfg, "trainer.epoch")
    assert "trainer.epoch" in message and "epochs" in message and "batch_size" in message
    assert schema.unknown_key(cfg, "trainer.epochs") is None
    # the workload's own options are free
    assert schema.unknown_key(cfg, "workload.anything") is None
    assert "rotation" in schema.unknown_key(cfg, "data.augment.rot")
