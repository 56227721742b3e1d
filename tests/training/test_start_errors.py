"""Mistakes that used to fail late, or with another library's words, fail at the start naming the key."""

import pytest

import titans.training.run as run_mod
from titans.training.builders import build_base_model


@pytest.mark.parametrize("key", ["paths.output_dir", "paths.ckpt_dir"])
def test_an_unwritable_directory_fails_before_training(tiny_cfg, tmp_path, monkeypatch, key):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")

    def never(*args, **kwargs):
        raise AssertionError("the model was built: the check came too late")

    monkeypatch.setattr(run_mod, "build_model", never)
    with pytest.raises(ValueError, match=rf"{key}=.*a_file/sub' is not a writable directory.*point {key}"):
        run_mod.train(tiny_cfg("trainer.max_steps=1", f"{key}={blocker / 'sub'}"))


@pytest.mark.parametrize("path", ["/no/such/dir", "./no_such_dir", "~/no_such_dir", "outputs/no/such"])
def test_a_missing_pretrained_path_says_so(path):
    with pytest.raises(ValueError, match=r"model.pretrained=.* is a path that does not exist"):
        build_base_model({"pretrained": path, "tokenizer": "byte"})
