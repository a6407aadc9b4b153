import pytest

from cifarlab.config import DEVICE_TYPES, Config, from_dict, list_recipes, load_recipe, parse_assignment, resolve, validate
from cifarlab.errors import CifarlabError
from cifarlab.models import list_models, registry


def test_recipes_are_listed_and_valid():
    recipes = list_recipes()
    assert {"tutorial", "resnet18", "resnet20"} <= set(recipes)
    for name in recipes:
        assert load_recipe(name).recipe == name
        for device in DEVICE_TYPES:
            validate(load_recipe(name, device))
        assert recipes[name]  # every recipe describes itself


def test_every_model_family_has_a_recipe():
    modules = {registry._get_builder(name).__module__ for name in list_models()}
    families = {module for module in modules if module.startswith("cifarlab.")}  # not test-only models
    with_recipe = {registry._get_builder(load_recipe(name).model.name).__module__ for name in list_recipes()}
    assert families == with_recipe


def test_tutorial_is_the_seed_recipe():
    c = load_recipe("tutorial")
    assert (c.model.name, c.train.batch_size, c.train.epochs) == ("lenet", 4, 2)
    assert (c.optim.name, c.optim.lr, c.optim.momentum, c.optim.nesterov) == ("sgd", 0.001, 0.9, False)
    assert c.data.mean == [0.5] * 3 and c.data.std == [0.5] * 3
    assert c.augment.translate == 0 and c.augment.flip == "none" and c.augment.cutout == 0


def test_precedence_recipe_file_flags_sets(tmp_path):
    file = tmp_path / "c.yaml"
    file.write_text("optim:\n  lr: 0.5\ntrain:\n  epochs: 3\n")
    c = resolve("tutorial", str(file), {"train": {"epochs": 4}}, ["train.epochs=5", "optim.betas=[0.8, 0.9]"])
    assert c.optim.lr == 0.5 and c.train.epochs == 5 and c.optim.betas == [0.8, 0.9]
    assert c.model.name == "lenet"


def test_round_trip_through_yaml():
    c = resolve("resnet18", sets=["augment.cutout=8"])
    import yaml

    assert from_dict(yaml.safe_load(c.to_yaml())) == c


@pytest.mark.parametrize(
    "assignment, message",
    [
        ("optim.lr=-0.1", "optim.lr=-0.1 is out of range"),
        ("train.epochs=0", "train.epochs=0 is out of range"),
        ("optim.name=lion", "optim.name='lion' is not allowed; choose one of: sgd, adam, adamw"),
        ("augment.flip=sideways", "augment.flip='sideways' is not allowed"),
        ("train.epochs=2.5", "train.epochs must be of type int"),
        ("optim.nope=1", "unknown key 'optim.nope'"),
        ("nope.lr=1", "unknown section 'nope'"),
        ("lr=1", "--set expects section.key=value"),
        ("optim.label_smoothing=1.0", "optim.label_smoothing=1.0 is out of range"),
        ("data.mean=[0.5]", "data.mean must be three numbers"),
        ("model.name=resnet9000", "unknown model 'resnet9000'"),
        ("train.device=tpu", "train.device='tpu' is not allowed"),
        ("augment.policy=autoaug", "augment.policy='autoaug' is not allowed; choose one of: none, autoaugment, randaugment"),
        ("augment.random_erasing=1.5", "augment.random_erasing=1.5 is out of range; it must be in [0, 1]"),
        ("augment.randaugment_magnitude=31", "augment.randaugment_magnitude=31 is out of range; it must be in [0, 30]"),
        ("augment.randaugment_ops=0", "augment.randaugment_ops=0 is out of range; it must be > 0"),
        ("augment.mixup_alpha=-1", "augment.mixup_alpha=-1.0 is out of range; it must be >= 0"),
    ],
)
def test_bad_values_are_rejected_with_the_key_named(assignment, message):
    with pytest.raises(CifarlabError, match=message.replace("(", r"\(").replace("[", r"\[")):
        resolve("tutorial", sets=[assignment])


def test_unknown_recipe_and_missing_file():
    with pytest.raises(CifarlabError, match="unknown recipe 'nope'.*tutorial"):
        resolve("nope")
    with pytest.raises(CifarlabError, match="does not exist"):
        resolve("tutorial", "missing.yaml")


def test_parse_assignment_reads_yaml_values():
    assert parse_assignment("train.compile=true") == {"train": {"compile": True}}
    assert parse_assignment("data.train_subset=null") == {"data": {"train_subset": None}}
    assert Config().train.epochs > 0


def test_recipe_device_sections():
    on_cpu = resolve("fast", flags={"train": {"device": "cpu"}})
    on_gpu = resolve("fast", flags={"train": {"device": "cuda"}})
    assert on_cpu.train.precision == "auto" and not on_cpu.train.compile  # bf16 only where the CPU has it natively
    assert resolve("fast-v1", flags={"train": {"device": "cpu"}}).train.precision == "fp32"  # as first measured
    assert on_gpu.train.precision == "bf16" and on_gpu.train.compile
    assert resolve("fast", flags={"train": {"device": "cuda"}}, sets=["train.compile=false"]).train.compile is False


def test_deep_set_merges_into_mapping_settings():
    c = resolve("fast", sets=["model.options.whitening=false", "optim.groups.filters.lr=0.1"])
    assert c.model.options == {"head_scale": 0.00390625, "head_init_std": 1.0, "whitening": False}
    assert c.optim.groups["filters"] == {"optimizer": "muon", "lr": 0.1, "momentum": 0.6}
    assert c.optim.groups["head"] == {"lr": 686.0}


def test_recipe_can_start_from_a_base_recipe():
    quick, full = resolve("fast90"), resolve("fast")
    assert quick.recipe == "fast90" and quick.model.options["widths"] == [32, 128, 128]
    assert quick.model.options["head_init_std"] == full.model.options["head_init_std"]  # inherited
    assert quick.optim == full.optim and quick.train.epochs < full.train.epochs
