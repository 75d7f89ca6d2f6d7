"""The hardware options come from one table (config.HARDWARE_OPTIONS): the config, every command
that takes them and the README's table must all say what the table says."""

import dataclasses
from pathlib import Path

import pytest
from click.testing import CliRunner

from aipm_fast import cli
from aipm_fast.config import ENV, HARDWARE_OPTIONS, EngineConfig, HardwareOption, hardware_options_markdown

README = Path(__file__).resolve().parent.parent / "README.md"
COMMANDS = ("devices", "probe", "calibrate", "record", "bench", "train", "serve", "profile")
# Options whose text is not their value: (text on the command line, value in the EngineConfig).
EXAMPLES = {"gpus": ("0,2", [0, 2])}


def cli_example(o):
    """(arguments giving option o, the value it should give the config field)."""
    if o.switch is not None:
        return [o.cli_flag], o.switch
    if o.parse is str:
        return [o.cli_flag, f"/from-cli/{o.name}"], f"/from-cli/{o.name}"
    assert o.name in EXAMPLES, f"give {o.name} an example in EXAMPLES"
    text, value = EXAMPLES[o.name]
    return [o.cli_flag, text], value


def command_args(command, tmp_path):
    """The least each command needs to reach the point where it makes its EngineConfig."""
    if command == "record":
        return ["--duration", "1", "--out", str(tmp_path / "rec")]
    if command == "bench":
        pytest.importorskip("torch")
        return ["--model", "resnet18", "--device", "cpu", "--out", str(tmp_path / "bench")]
    if command == "train":
        pytest.importorskip("torch")
        return ["--model", "lenet5_caffe", "--steps", "1", "--device", "cpu", "--out", str(tmp_path / "train")]
    if command == "serve":
        pytest.importorskip("prometheus_client")
    if command == "profile":
        pytest.importorskip("torch")
        return ["--model", "resnet18"]
    return []


class Built(Exception):
    """Stops a command once it has made its EngineConfig, before it touches any hardware."""


def config_of(monkeypatch, command, args, env):
    built = []
    real = cli.engine_config

    def capture(kwargs):
        built.append(real(kwargs))
        raise Built

    monkeypatch.setattr(cli, "engine_config", capture)
    unset = {o.env: None for o in HARDWARE_OPTIONS if o.env}
    result = CliRunner().invoke(cli.main, [command, *args], env={**unset, **env})
    assert isinstance(result.exception, Built), result.output
    return built[0]


def test_config_fields_defaults_and_env_come_from_the_table():
    fields = {f.name: f.default for f in dataclasses.fields(EngineConfig)}
    names = [o.name for o in HARDWARE_OPTIONS]
    assert list(fields)[: len(names)] == names
    assert {o.name: o.default for o in HARDWARE_OPTIONS} == {n: fields[n] for n in names}
    assert ENV == {o.name: o.env for o in HARDWARE_OPTIONS if o.env}
    assert len(set(names)) == len(names) and len({o.cli_flag for o in HARDWARE_OPTIONS}) == len(names)


def test_a_switch_cannot_have_a_variable_that_nothing_would_read():
    with pytest.raises(ValueError, match="no environment variable"):
        HardwareOption("hwmon", "bool", True, "do not read hwmon", flag="--no-hwmon", switch=False, env="AIPM_NO_HWMON")


def test_from_env_reads_each_variable_and_explicit_values_win():
    environ = {o.env: f"/from-env/{o.name}" for o in HARDWARE_OPTIONS if o.env}
    config = EngineConfig.from_env(environ)
    for o in HARDWARE_OPTIONS:
        assert getattr(config, o.name) == (f"/from-env/{o.name}" if o.env else o.default)
    explicit = EngineConfig.from_env(environ, **{n: f"/given/{n}" for n in ENV})
    assert all(getattr(explicit, n) == f"/given/{n}" for n in ENV)
    assert EngineConfig.from_env({v: "" for v in ENV.values()}) == EngineConfig()  # empty: unset


def test_every_command_with_hardware_options_takes_all_of_them():
    names = {o.name for o in HARDWARE_OPTIONS}
    taking = {}
    for name, command in cli.main.commands.items():
        given = {p.name for p in command.params} & names
        assert given in (set(), names), f"{name} takes only {sorted(given)}"
        if given:
            taking[name] = {p.name: p for p in command.params}
    assert sorted(taking) == sorted(COMMANDS)
    for params in taking.values():
        for o in HARDWARE_OPTIONS:
            assert params[o.name].opts == [o.cli_flag]
            assert params[o.name].envvar == o.env


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_honours_every_variable(command, tmp_path, monkeypatch):
    env = {o.env: f"/from-env/{o.name}" for o in HARDWARE_OPTIONS if o.env}
    config = config_of(monkeypatch, command, command_args(command, tmp_path), env)
    for o in HARDWARE_OPTIONS:
        assert getattr(config, o.name) == (f"/from-env/{o.name}" if o.env else o.default), o.name


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_accepts_every_option_over_its_variable(command, tmp_path, monkeypatch):
    env = {o.env: f"/from-env/{o.name}" for o in HARDWARE_OPTIONS if o.env}
    args, expected = [], {}
    for o in HARDWARE_OPTIONS:
        option_args, expected[o.name] = cli_example(o)
        args += option_args
    config = config_of(monkeypatch, command, command_args(command, tmp_path) + args, env)
    assert {n: getattr(config, n) for n in expected} == expected


def test_a_bad_gpu_list_is_refused_naming_the_option():
    result = CliRunner().invoke(cli.main, ["devices", "--gpus", "1,x"])
    assert result.exit_code == 2
    assert "'--gpus'" in result.output and "comma list of GPU indices, got '1,x'" in result.output


def test_readme_table_is_the_tables_rendering():
    lines = README.read_text().split("\n")
    start = lines.index("## Hardware paths")
    first = next(i for i in range(start, len(lines)) if lines[i].startswith("|"))
    end = next(i for i in range(first, len(lines)) if not lines[i].startswith("|"))
    shown = "\n".join(lines[first:end]) + "\n"
    assert shown == hardware_options_markdown(), (
        "README.md's Hardware paths table is out of date: replace it with the output of\n"
        'python -c "from aipm_fast.config import hardware_options_markdown as m; print(m())"'
    )


def test_periods_come_from_the_environment_and_explicit_ones_win():
    from aipm_fast.config import DEFAULT_PERIODS_S

    config = EngineConfig.from_env({"AIPM_PERIODS": "rapl=0.001, nvml.energy=1"})
    assert config.periods_s["rapl"] == 0.001 and config.periods_s["nvml.energy"] == 1.0
    assert config.periods_s["hwmon"] == DEFAULT_PERIODS_S["hwmon"]
    explicit = EngineConfig.from_env({"AIPM_PERIODS": "rapl=0.001"}, periods_s={"rapl": 0.05})
    assert explicit.periods_s["rapl"] == 0.05


@pytest.mark.parametrize("text", ["rapl", "gpu=1", "rapl=0", "rapl=-1", "rapl=nan", "rapl=x"])
def test_a_bad_period_is_refused_naming_it(text):
    with pytest.raises(ValueError, match=r"AIPM_PERIODS: .*" + text.split("=")[0]):
        EngineConfig.from_env({"AIPM_PERIODS": text})


def test_the_periods_option_names_a_bad_value():
    result = CliRunner().invoke(cli.main, ["devices", "--periods", "rapl=fast"])
    assert result.exit_code == 2 and "--periods" in result.output and "rapl=fast" in result.output
