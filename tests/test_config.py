"""Every invalid configuration value is rejected with one line naming the flag and the allowed range."""

import math

import pytest

from microgpt import UserError
from microgpt.config import ModelConfig, SampleConfig, TrainConfig, lr_at


@pytest.mark.parametrize("kwargs,message", [
    ({"n_embd": 0}, "--n-embd must be an integer >= 1"),
    ({"n_layer": -1}, "--n-layer must be an integer >= 1"),
    ({"n_head": 0}, "--n-head must be an integer >= 1"),
    ({"block_size": 0}, "--block-size must be an integer >= 1"),
    ({"n_embd": 64, "n_head": 3}, "--n-head must divide --n-embd (64 % 3 != 0)"),
    ({"mlp_act": "gelu"}, "--mlp-act must be one of relu2, relu"),
    ({"init_std": 0.0}, "--init-std must be > 0"),
    ({"init_std": math.nan}, "--init-std must be a finite number"),
    ({"vocab_size": 1}, "vocab size must be >= 2"),
    ({"n_embd": 2.5}, "--n-embd must be an integer >= 1"),
])
def test_model_config_errors(kwargs, message):
    with pytest.raises(UserError) as e:
        ModelConfig(**kwargs).validate()
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("kwargs,message", [
    ({"num_steps": 0}, "--num-steps must be an integer >= 1"),
    ({"batch_size": 0}, "--batch-size must be an integer >= 1"),
    ({"learning_rate": 0.0}, "--learning-rate must be > 0"),
    ({"learning_rate": -1e-3}, "--learning-rate must be > 0"),
    ({"learning_rate": math.inf}, "--learning-rate must be a finite number"),
    ({"warmup_steps": 10, "num_steps": 10}, "--warmup-steps must be < --num-steps (10 >= 10)"),
    ({"warmup_steps": -1}, "--warmup-steps must be an integer >= 0"),
    ({"lr_schedule": "step"}, "--lr-schedule must be one of linear, cosine, constant"),
    ({"beta1": 1.0}, "--beta1 must be in [0, 1)"),
    ({"beta2": -0.1}, "--beta2 must be in [0, 1)"),
    ({"eps": 0.0}, "--eps must be > 0"),
    ({"grad_clip": -1.0}, "--grad-clip must be >= 0"),
    ({"val_fraction": 1.0}, "--val-fraction must be in [0, 1)"),
    ({"patience": -2}, "--patience must be an integer >= 0"),
])
def test_train_config_errors(kwargs, message):
    with pytest.raises(UserError) as e:
        TrainConfig(**kwargs).validate()
    assert message in str(e.value)


@pytest.mark.parametrize("kwargs,message", [
    ({"temperature": 0.0}, "--temperature must be > 0"),
    ({"temperature": -1.0}, "--temperature must be > 0"),
    ({"top_k": -1}, "--top-k must be an integer >= 0"),
    ({"top_p": 0.0}, "--top-p must be in (0, 1]"),
    ({"top_p": 1.5}, "--top-p must be in (0, 1]"),
    ({"num_samples": -1}, "--num-samples must be an integer >= 0"),
    ({"max_len": -3}, "--max-len must be an integer >= 0"),
])
def test_sample_config_errors(kwargs, message):
    with pytest.raises(UserError) as e:
        SampleConfig(**kwargs).validate()
    assert message in str(e.value)


def test_defaults_are_valid_and_round_trip():
    for cls in (ModelConfig, TrainConfig, SampleConfig):
        cfg = cls().validate()
        assert cls.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(UserError, match="unknown ModelConfig keys: colour"):
        ModelConfig.from_dict({**ModelConfig().to_dict(), "colour": 1})


def test_lr_schedules():
    linear = TrainConfig(num_steps=10, learning_rate=1.0)
    assert [lr_at(s, linear) for s in (0, 5, 9)] == pytest.approx([1.0, 0.5, 0.1])
    warm = TrainConfig(num_steps=12, learning_rate=1.0, warmup_steps=2, lr_schedule="cosine")
    assert [lr_at(s, warm) for s in (0, 1, 2, 7)] == pytest.approx([0.5, 1.0, 1.0, 0.5])
    assert lr_at(7, TrainConfig(num_steps=10, lr_schedule="constant", learning_rate=0.3)) == 0.3
