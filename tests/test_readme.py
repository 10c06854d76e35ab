"""The README's Python runs as written (on the bundled Lite0 teacher and generated data)."""

import re
from pathlib import Path

README = Path(__file__).parents[1] / "README.md"


def test_every_python_block_of_the_readme_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks
    monkeypatch.chdir(tmp_path)
    namespace = {}  # one session, as a reader runs them top to bottom
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 -- the project's own README
    decisions, prediction = namespace["decisions"], namespace["prediction"]
    assert decisions.shape == (8,) and prediction.maps.shape == (8, 128, 128)  # the 8 generated cracks
    assert (tmp_path / "deploy" / "model.xml").is_file()
    assert namespace["out"].maps.shape == namespace["same"].maps.shape == (4, 128, 128)
    # fit() calibrates as `sacd-fast train` does: on the held-out images, for the default false-alarm rate
    mine = namespace["sacd_fast"].Inferencer(tmp_path / "mine" / "model.pt").thresholds
    assert mine.source == "held-out normal training images" and mine.images == 2 and mine.false_alarm_rate == 0.01
