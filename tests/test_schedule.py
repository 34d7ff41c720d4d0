"""`selfguided schedule`: a recurring run created with the real kfp.Client against a stand-in KFP API
(tests/kfp_api_stub.py, kfp 2.17.3: kfp/client/client.py Client.create_experiment,
create_recurring_run, list_recurring_runs, delete_recurring_run; paths from
kfp_server_api/api/experiment_service_api.py and recurring_run_service_api.py), then shown by
`selfguided schedule --list` and removed by `--delete`."""

from __future__ import annotations

import pytest
from kfp_api_stub import API, KfpApiStub
from servers import serving

from selfguided.pipelines.cli.main import main


@pytest.fixture
def kfp_api():
    stub = KfpApiStub()
    with serving(stub.server):
        yield stub


def test_a_recurring_run_created_through_the_cli_is_listed_with_its_schedule(kfp_api, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["schedule", "--kfp-host", kfp_api.host, "--list"]) == 0
    assert "No recurring runs in KFP experiment selfguided" in capsys.readouterr().out
    kfp_api.requests.clear()

    code = main(["schedule", "--kfp-host", kfp_api.host, "--cron", "0 6 * * 1", "--pipeline", "train",
                 "--param", "num_epochs=2", "--param", "seed_uri=s3://seeds/seed-0123456789abcdef/records.jsonl"])
    assert code == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    (job,) = kfp_api.recurring_runs.values()
    assert f"KFP recurring run {job['recurring_run_id']}" in out
    assert kfp_api.calls() == [("GET", f"{API}/experiments"), ("POST", f"{API}/experiments"),
                               ("POST", f"{API}/recurringruns")]
    # What the real client sent: KFP's 6-field cron, enabled, one at a time, the compiled training pipeline.
    assert job["trigger"] == {"cron_schedule": {"cron": "0 0 6 * * 1"}} and job["mode"] == "ENABLE"
    assert job["max_concurrency"] == 1 and job["no_catchup"] is True
    assert job["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "selfguided"  # with its platform_spec
    assert job["runtime_config"]["parameters"]["num_epochs"] == 2

    assert main(["schedule", "--kfp-host", kfp_api.host, "--list"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| selfguided-train"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:5] == ["selfguided-train", job["recurring_run_id"], "0 0 6 * * 1", "ENABLED", "selfguided"]
    assert "num_epochs=2" in cells[6] and "1 recurring run(s) in KFP experiment selfguided" in out

    assert main(["schedule", "--kfp-host", kfp_api.host, "--delete", "selfguided-train"]) == 0
    assert not kfp_api.recurring_runs and "deleted recurring run selfguided-train" in capsys.readouterr().out
    assert main(["schedule", "--kfp-host", kfp_api.host, "--delete", "selfguided-train"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("selfguided ") and "no recurring run(s) of that name or id" in err and err.count("\n") == 1


def test_schedule_without_cron_list_or_delete_is_one_line(capsys):
    assert main(["schedule", "--kfp-host", "http://127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert "give --cron" in err and err.count("\n") == 1


def test_the_flywheel_is_scheduled_as_one_recurring_run_at_a_time(kfp_api, capsys, tmp_path, monkeypatch):
    """`schedule --pipeline flywheel`: the compiled selfguided-flywheel pipeline (harvest, then the training
    pipeline under its retrain condition) as a recurring run with max_concurrency 1, so a retrain in
    flight holds the next harvest back; it needs an S3 seed store the cluster reads."""
    monkeypatch.chdir(tmp_path)
    assert main(["schedule", "--kfp-host", kfp_api.host, "--cron", "0 3 * * *", "--pipeline", "flywheel",
                 "--param", "seed_store=.selfguided/seed-versions"]) == 2  # a folder on this machine
    err = capsys.readouterr().err
    assert "the flywheel's steps cannot read it; give s3://bucket/prefix" in err and err.count("\n") == 1
    assert not kfp_api.recurring_runs
    assert main(["schedule", "--kfp-host", kfp_api.host, "--cron", "0 3 * * *", "--pipeline", "flywheel",
                 "--param", "seed_store=s3://seeds/flywheel", "--param", "min_new_records=200"]) == 0
    (job,) = kfp_api.recurring_runs.values()
    assert job["display_name"] == "selfguided-flywheel" and job["max_concurrency"] == 1 and job["no_catchup"] is True
    assert job["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * *"}}
    spec = job["pipeline_spec"]["pipeline_spec"]
    assert spec["pipelineInfo"]["name"] == "selfguided-flywheel" and set(spec["root"]["dag"]["tasks"]) == {
        "harvest", "condition-1"}
    assert job["runtime_config"]["parameters"] == {"seed_store": "s3://seeds/flywheel", "min_new_records": 200}
    assert main(["schedule", "--kfp-host", kfp_api.host, "--list"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| selfguided-flywheel"))
    assert [c.strip() for c in row.strip("|").split("|")][2:5] == ["0 0 3 * * *", "ENABLED", "selfguided-flywheel"]
