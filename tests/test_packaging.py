"""A wheel install (not only an editable checkout) finds the bundled profiles and spaces."""
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_ships_and_finds_the_bundled_yaml(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q",
                    "-w", str(tmp_path / "dist")], check=True, cwd=tmp_path)
    wheel = next((tmp_path / "dist").glob("searchprune-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for folder in ("hw_profiles", "search_spaces"):
        shipped = sorted(Path(n).name for n in names if n.startswith(f"searchprune/{folder}/"))
        assert shipped == sorted(p.name for p in (ROOT / folder).glob("*.yaml"))
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(target), str(wheel)], check=True)
    code = ("import searchprune as sp; "
            "from searchprune.hardware import bundled_profiles; "
            "from searchprune.spaces import bundled_spaces; "
            "sp.load_profile('stm32l4r5-xcubeai'); sp.load_space('digits_plain'); "
            "print(sp.__file__, bundled_profiles()['stm32l4r5-xcubeai'], "
            "bundled_spaces()['digits_plain'])")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    for line in out.stdout.split():
        assert Path(line).resolve().is_relative_to(target.resolve()), line
