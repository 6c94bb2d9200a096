"""The code's shape: dependencies run one way through the layers, and every default is written
once (the CLI and the main job read theirs from the stage's config dataclass)."""

import ast
import dataclasses
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))  # the main job's module, bc_then_rl

# problem <- experts <- envs <- datasets and evaluation <- policies, baselines <- CLI
LAYERS = [
    ("trc_gym.problem", "trc_gym.compiled_rollout", "trc_gym.checks", "trc_gym.threads",
     "trc_gym.files", "trc_gym.devices"),
    ("trc_gym.experts",),
    ("trc_gym.envs",),
    ("trc_gym.datasets", "trc_gym.evaluation", "trc_gym.planning_policy", "trc_gym"),
    ("policies", "baselines"),
    ("trc_gym.cli",),
]


def layer_of(module: str) -> int:
    """The layer of a package module: the longest registered prefix decides."""
    best, level = "", -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
                best, level = prefix, index
    return level


def package_modules() -> dict[str, Path]:
    modules = {}
    for package in ("trc_gym", "policies", "baselines"):
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


def imports_of(path: Path) -> set[str]:
    """Every package module ``path`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    modules = package_modules()
    return {name for name in found if name in modules}


def test_dependencies_run_one_way():
    upward = []
    for module, path in package_modules().items():
        for imported in imports_of(path):
            if layer_of(imported) > layer_of(module):
                upward.append(f"{module} imports {imported}")
            same = layer_of(imported) == layer_of(module) == 4
            if same and imported.split(".")[0] != module.split(".")[0]:
                upward.append(f"{module} imports {imported} (policies and baselines are peers)")
    assert not upward, "\n".join(upward)
    assert layer_of("trc_gym.experts.ilqr") == 1 and layer_of("trc_gym.envs.pendulum") == 2


def test_no_import_cycles():
    modules = package_modules()
    graph = {name: {i for i in imports_of(path) if i != name} for name, path in modules.items()}
    # A package imports its own submodules; only cycles between distinct modules count.
    graph = {name: {i for i in deps if not i.startswith(name + ".")}
             for name, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*stack, node, nxt]))
            if nxt not in state:
                visit(nxt, [*stack, node])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [])


def test_cli_defaults_are_the_config_defaults():
    from policies import BCConfig, GRPOConfig
    from trc_gym.cli import parse
    from trc_gym.datasets import DataConfig
    from trc_gym.evaluation import DEFAULT_EPISODES, HELD_OUT_SEED

    assert parse(["generate", "--out", "d.npz"]).data == DataConfig()
    assert parse(["train-bc", "--data", "d.npz", "--out", "p.pt"]).bc == BCConfig()
    assert parse(["finetune", "--init", "p.pt", "--out", "q.pt"]).rl == GRPOConfig()
    command = parse(["evaluate", "expert"])
    assert (command.episodes, command.seed) == (DEFAULT_EPISODES, HELD_OUT_SEED)
    # And an option given on the command line reaches the config.
    assert parse(["train-bc", "--data", "d", "--out", "p", "--epochs", "7"]).bc.epochs == 7
    assert parse(["finetune", "--init", "p", "--out", "q", "--iterations", "9"]).rl.iterations == 9


def test_main_job_defaults_layer_the_env_settings_over_the_configs():
    import tyro
    from bc_then_rl import ENV_DEFAULTS, JobConfig, job_defaults

    from policies import BCConfig, GRPOConfig

    default = job_defaults()
    assert default == JobConfig() and default.bc == BCConfig() and default.rl == GRPOConfig()
    vdp = job_defaults("TRC-VanDerPol-v0")
    assert vdp.bc == dataclasses.replace(BCConfig(), **ENV_DEFAULTS["TRC-VanDerPol-v0"]["bc"])
    parsed = tyro.cli(JobConfig, args=["--bc.epochs", "5"], default=vdp)
    assert parsed.bc.epochs == 5 and parsed.bc.batch_size == vdp.bc.batch_size
    quick = job_defaults(quick=True)
    assert quick.output_dir() != default.output_dir()  # a smoke run never overwrites the demo


def test_every_env_has_main_job_defaults_and_each_names_real_fields():
    from bc_then_rl import ENV_DEFAULTS, JobConfig, job_defaults

    import trc_gym

    assert set(ENV_DEFAULTS) == set(trc_gym.ENV_IDS)
    stages = {f.name: f for f in dataclasses.fields(JobConfig)}
    for env_id, layer in ENV_DEFAULTS.items():
        for key, value in layer.items():
            assert key in stages, (env_id, key)
            if isinstance(value, dict):
                stage = type(getattr(JobConfig(), key))
                assert set(value) <= {f.name for f in dataclasses.fields(stage)}, (env_id, key)
        config = job_defaults(env_id)  # each stage's config checks its values
        assert config.env == env_id and config.output_dir().name == env_id[4:-3]
        for key, value in layer.items():
            got = getattr(config, key)
            for field, wanted in (value.items() if isinstance(value, dict) else [(None, value)]):
                assert (got if field is None else getattr(got, field)) == wanted, (env_id, key)


@pytest.mark.parametrize("key", ["gap", "mean_cost", "ms_per_plan", "terminal_error_pole",
                                 "iterate_2"])
def test_one_metrics_registry_formats_every_table(key):
    from trc_gym.evaluation import format_table, metric

    table = format_table({"a": {key: 0.25}, "b": {}}, columns=(key,))
    assert metric(key).header in table.splitlines()[0]
    assert table.splitlines()[2] == f"| a | {metric(key).format(0.25)} |"
    assert table.splitlines()[3] == "| b | - |"
    with pytest.raises(ValueError, match="unknown metric"):
        metric("no_such_metric")
