"""Every config group composes; every model x memory combination builds with the tiny model."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = ["model", "memory", "data", "curriculum", "trainer", "logger", "callbacks", "paths", "debug", "experiment"]
SMALL = ["model.arch.hidden_size=64", "model.arch.num_attention_heads=2", "model.arch.num_key_value_heads=1",
         "model.arch.intermediate_size=128"]


def options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_train(overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=["paths.output_dir=/tmp/titans-cfg-test", *overrides])


@pytest.mark.parametrize("group, option", [(g, o) for g in GROUPS for o in options(g)],
                         ids=lambda x: str(x))
def test_every_group_option_composes_and_resolves(group, option):
    from omegaconf import OmegaConf

    cfg = compose_train([f"{group}={option}"])
    container = OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    assert container["paths"]["output_dir"] == "/tmp/titans-cfg-test"
    from titans.training.run import check_config

    if group != "curriculum":
        check_config(cfg)


def test_every_group_has_options():
    for g in GROUPS:
        assert options(g), g


@pytest.mark.parametrize("memory", options("memory"))
def test_tiny_model_with_every_memory_builds(memory):
    from titans.training.builders import build_model

    cfg = compose_train(["model=qwen3_tiny", f"memory={memory}", *SMALL])
    model, tok = build_model(cfg.model, cfg.memory)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable > 0
    if memory != "none":
        assert model.config.titans["variant"] == memory
        assert trainable < sum(p.numel() for p in model.parameters())  # freeze=memory by default


@pytest.mark.parametrize("model", [m for m in options("model") if m not in ("qwen3_tiny", "qwen3_0.6b_shape")])
def test_hub_models_compose_with_every_memory(model):
    for memory in options("memory"):
        cfg = compose_train([f"model={model}", f"memory={memory}"])
        assert cfg.model.pretrained.startswith("Qwen/Qwen3-") and cfg.model.arch is None


@pytest.mark.parametrize("name", ["cpu", "gpu", "ddp", "fsdp", "deepspeed"])
def test_trainer_configs_compose_with_strategy(name):
    cfg = compose_train([f"trainer={name}"])
    assert cfg.trainer._target_ == "lightning.pytorch.Trainer"
    if name in ("ddp", "fsdp", "deepspeed"):
        assert cfg.trainer.strategy._target_ and cfg.trainer.devices == 2
    if name in ("ddp", "fsdp"):  # instantiable without a GPU or a process group
        expected = {"ddp": "DDPStrategy", "fsdp": "FSDP2Strategy"}[name]
        assert type(instantiate(cfg.trainer.strategy)).__name__ == expected


@pytest.mark.parametrize("name", ["csv", "tensorboard", "none"])
def test_loggers_instantiate(name, tmp_path):
    cfg = compose_train([f"logger={name}", f"paths.output_dir={tmp_path}"])
    loggers = [instantiate(v) for v in (cfg.logger or {}).values()]
    assert len(loggers) == (0 if name == "none" else 1)


def test_unknown_group_option_names_the_group_and_the_options():
    with pytest.raises(ConfigCompositionException) as e:
        compose_train(["memory=mog"])
    msg = str(e.value)
    assert "memory/mog" in msg and "mag" in msg and "mac" in msg


@pytest.mark.parametrize("override", [f"curriculum={c}" for c in options("curriculum") if c != "none"]
                         + [f"experiment={e}" for e in options("experiment") if e.startswith("cpu_proof")])
def test_curriculum_stages_hold_valid_data_mixtures(override):
    """Every stage's data (of every curriculum and every experiment's curriculum) mixes only known tasks with
    known parameters and lengths that fit seq_len."""
    from omegaconf import OmegaConf

    from data_gen import Mixture
    from titans.training.data import DataConfig
    from titans.training.stages import apply_stage

    cfg = compose_train([override])
    for stage in cfg.curriculum.stages:
        merged = apply_stage(cfg, stage.name)
        data = DataConfig.from_mapping(OmegaConf.to_container(merged.data, resolve=True))
        for part in (data.train, data.val):
            Mixture.from_config({k: v for k, v in part.items() if k != "n"})


@pytest.mark.parametrize("name", ["cpu_proof_pairs", "cpu_proof_pairs_lengths", "cpu_proof_pairs_extend",
                                  "cpu_proof_pairs_from_scratch"])
def test_follow_up_experiments_change_only_the_curriculum_stages(name):
    """The distractor-pair follow-ups are the CPU proof's MAG with other stages: nothing else differs."""
    from omegaconf import OmegaConf

    base = OmegaConf.to_container(compose_train(["experiment=cpu_proof_mag"]), resolve=True)
    follow = OmegaConf.to_container(compose_train([f"experiment={name}"]), resolve=True)
    assert follow["curriculum"]["stages"] != base["curriculum"]["stages"]
    for cfg in (base, follow):
        cfg["curriculum"].pop("stages")
    assert follow == base


def test_variant_and_freeze_names_come_from_titans_config():
    """One list of names: the memory group, the layer classes and the builders all use titans.config's."""
    from titans.config import MEMORY_VARIANTS, VARIANTS
    from titans.training import builders
    from titans.variants import LAYER_CLASSES

    assert set(options("memory")) == {*MEMORY_VARIANTS, "none"} and set(LAYER_CLASSES) == set(VARIANTS)
    assert builders.MEMORY_VARIANTS is MEMORY_VARIANTS


def test_cpu_proof_variants_differ_only_where_their_files_say():
    """cpu_proof_{mag,mal,mac} share conf/experiment/cpu_proof/common.yaml; what each sets on top is what differs (the
    variant and its options, MAG's min_lr, the memory in layer 0 for MAG and MAC): the rest of the memory is one."""
    from omegaconf import OmegaConf

    cfgs = {v: OmegaConf.to_container(compose_train([f"experiment=cpu_proof_{v}"]), resolve=True)
            for v in ("mag", "mal", "mac")}
    inner = {v: dict(c["memory"]["memory"]) for v, c in cfgs.items()}
    assert inner["mag"].pop("min_lr") == 0.005  # MAL and MAC keep MemoryConfig's default
    assert inner["mal"].pop("min_lr", None) == inner["mac"].pop("min_lr", None) != 0.005
    assert inner["mag"] == inner["mal"] == inner["mac"] and inner["mag"]["head_dim"] == 256
    assert [c["memory"]["memory_layers"] for c in cfgs.values()] == [[0], None, [0]]
    assert {c["memory"]["window"] for c in cfgs.values()} == {64} and {c["cpu_threads"] for c in cfgs.values()} == {1}
    for key in ("model", "curriculum", "trainer", "bptt", "optimizer", "scheduler", "data"):
        assert cfgs["mag"][key] == cfgs["mal"][key] == cfgs["mac"][key], key
