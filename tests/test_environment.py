"""results.json records where a job ran (``xlt.environment``), and xlt-report's
Provenance table shows it: library versions and hardware move numbers at the
level of seed noise without being part of a job's identity."""

import json
from importlib import metadata

import torch

from tests.helpers import write_composed_job
from xlt import environment, report, results


def test_the_environment_names_the_libraries_and_the_hardware():
    env = environment.environment()
    assert env["packages"]["torch"] == metadata.version("torch")
    assert torch.__version__.startswith(env["packages"]["torch"].split("+")[0])
    assert set(env["packages"]) <= set(environment.PACKAGES) and "transformers" in env["packages"]
    assert env["cpu"]
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0  # 0 in CI; a GPU workstation has some
    assert env["gpus"] == [torch.cuda.get_device_name(i) for i in range(visible)]
    line = environment.summary({**env, "gpus": ["NVIDIA H100", "NVIDIA H100"]})
    assert line.startswith(f"{env['cpu']}, 2× NVIDIA H100; torch {env['packages']['torch']}, ")
    assert environment.summary(None) == "" and "no GPU;" in environment.summary(env)


def test_a_finished_job_records_its_environment_and_the_report_shows_it(tmp_path, capsys):
    root = tmp_path / "runs"
    run = write_composed_job(root, "s1", ["lang=ru", "seed=1"], [1, 0, 1])
    recorded = json.loads((run / results.RESULTS_FILE).read_text())["environment"]
    assert recorded == json.loads(json.dumps(environment.environment()))
    assert "environment" not in recorded.get("config", {})  # not identity: a rerun elsewhere keeps the result
    other = write_composed_job(root, "s2", ["lang=ru", "seed=2"], [1, 1, 1])
    saved = json.loads((other / results.RESULTS_FILE).read_text())
    saved["environment"] = {**saved["environment"], "cpu": "Another CPU"}
    (other / results.RESULTS_FILE).write_text(json.dumps(saved))
    assert report.main([str(root), "--out", str(tmp_path / "report")]) == 0
    provenance = capsys.readouterr().out.split("## Provenance")[1]
    row = next(line for line in provenance.splitlines() if "| ru |" in line)  # one configuration, two machines
    environments = row.rstrip(" |").rsplit(" | ", 1)[1]
    assert sorted(environments.split(" · ")) == sorted([environment.summary(recorded),
                                                        environment.summary(saved["environment"])]), row
