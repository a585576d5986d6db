import pytest
import yaml

import searchprune as sp
from searchprune.errors import ConfigError, UnknownNameError
from searchprune.hardware import bundled_profiles

CALIBRATED = ["stm32l4r5-xcubeai", "stm32h7a3-xcubeai", "stm32u575-xcubeai", "ra6m4-tflm-cmsisnn",
              "ra8d1-tflm-cmsisnn", "nrf5340-microtvm-cmsisnn", "stm32l4r5-tflm-ref",
              "stm32g0b1-hale"]


def test_every_bundled_profile_loads_and_validates():
    profiles = sp.list_profiles()
    names = {p.name for p in profiles}
    assert len(profiles) >= 6
    assert set(CALIBRATED) <= names
    for p in profiles:
        assert p.name == bundled_profiles()[p.name].stem  # file name == profile name
        assert p.clock_hz > 1e6 and p.sram_bytes > 0 and p.flash_bytes > 0
        assert p.latency.conv_cycles_per_mac > 0 and p.active_power_mw > 0
        assert "datasheet" in p.source


def test_calibrated_profiles_record_their_rows():
    for name in CALIBRATED:
        p = sp.load_profile(name)
        cal = p.source["calibration"]
        assert len(cal["rows"]) >= 3
        assert abs(cal["fit_error_median_pct"]) <= 5


def test_tiny_part_is_tiny():
    p = sp.load_profile("stm32g031-cgen")
    assert p.sram_bytes == 8 * 1024 and p.flash_bytes == 64 * 1024


def _write(tmp_path, data, name="board.yaml"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def _good():
    return yaml.safe_load(bundled_profiles()["stm32f746-tflm-cmsisnn"].read_text())


def test_profile_by_path_equals_bundled(tmp_path):
    path = _write(tmp_path, _good())
    assert sp.load_profile(str(path)) == sp.load_profile("stm32f746-tflm-cmsisnn")


@pytest.mark.bad_input
@pytest.mark.parametrize("mutate, field, fragment", [
    (lambda d: d.pop("clock_hz"), "clock_hz", "missing"),
    (lambda d: d.update(clock_hz=0), "clock_hz", "> 0"),
    (lambda d: d.update(sram_bytes=-8192), "sram_bytes", "> 0"),
    (lambda d: d.update(clock_hz=9e12), "clock_hz", "implausibly large"),
    (lambda d: d.update(flash_bytes="1MB"), "flash_bytes", "integer"),
    (lambda d: d.update(clok_hz=1), "clok_hz", "did you mean 'clock_hz'"),
    (lambda d: d["runtime"].update(channel_multiple=0), "runtime.channel_multiple", "> 0"),
    (lambda d: d["latency"].pop("fc_cycles_per_mac"), "latency.fc_cycles_per_mac", "missing"),
    (lambda d: d["runtime"].update(im2col="yes"), "runtime.im2col", "true or false"),
    (lambda d: d.update(runtime=[1, 2]), "runtime", "mapping"),
])
def test_bad_profile_fields_name_file_field_and_value(tmp_path, mutate, field, fragment):
    data = _good()
    mutate(data)
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as e:
        sp.load_profile(path)
    msg = str(e.value)
    assert str(path) in msg and field in msg and fragment in msg


@pytest.mark.bad_input
@pytest.mark.parametrize("text, fragment", [
    ("name: [unclosed", "not valid YAML"),
    ("", "empty"),
    ("- just\n- a list\n", "mapping"),
])
def test_bad_profile_files(tmp_path, text, fragment):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=fragment):
        sp.load_profile(path)


@pytest.mark.bad_input
def test_unknown_profile_name_suggests():
    with pytest.raises(UnknownNameError, match="did you mean 'stm32f746-tflm-cmsisnn'"):
        sp.load_profile("stm32f746-tflm-cmsis")


@pytest.mark.bad_input
def test_missing_profile_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        sp.load_profile(tmp_path / "nope.yaml")
