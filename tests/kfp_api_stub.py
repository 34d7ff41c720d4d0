"""A stand-in of the KFP v2beta1 REST API on 127.0.0.1, for the real `kfp.Client`.

It answers what kfp 2.17's Client (kfp/client/client.py) sends for the flows the CLI uses, at the
paths of the generated client (kfp_server_api/api/*_service_api.py):

- `Client.__init__` -> `get_kfp_healthz`: GET /apis/v2beta1/healthz (when no namespace is set);
- `create_experiment` -> `get_experiment(experiment_name=...)`: GET /apis/v2beta1/experiments?filter=
  (a JSON Filter, operation 1 = EQUALS on display_name), then POST /apis/v2beta1/experiments when none;
- `create_recurring_run`: POST /apis/v2beta1/recurringruns (a V2beta1RecurringRun: display_name,
  trigger.cron_schedule.cron, mode ENABLE/DISABLE, pipeline_spec, runtime_config.parameters, ...);
- `list_recurring_runs`: GET /apis/v2beta1/recurringruns?experiment_id=&page_size=&page_token=
  (the list is under `recurringRuns`: V2beta1ListRecurringRunsResponse.attribute_map);
- `delete_recurring_run`: DELETE /apis/v2beta1/recurringruns/{id};
- `create_run_from_pipeline_package` -> `run_pipeline`: POST /apis/v2beta1/runs.

Replies are JSON with the field names the API server writes (snake_case, as kfp_server_api's
attribute_map reads them); a recurring run comes back with its id, `status` ENABLED/DISABLED
(the server's V2beta1RecurringRunStatus) and created/updated times. Every request is recorded.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from urllib.parse import parse_qs, urlsplit

from servers import QuietJsonHandler, local_http_server

API = "/apis/v2beta1"


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class KfpApiStub:
    def __init__(self) -> None:
        self.experiments: dict[str, dict] = {}
        self.recurring_runs: dict[str, dict] = {}
        self.runs: dict[str, dict] = {}
        self.requests: list[dict] = []
        stub = self

        class Handler(QuietJsonHandler):
            def _handle(self):
                url = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = json.loads(raw) if raw else None
                stub.requests.append({"method": self.command, "path": url.path, "query": query, "body": body})
                try:
                    code, reply = stub.route(self.command, url.path, query, body)
                except KeyError as missing:
                    code, reply = 404, {"error_message": f"not found: {missing}", "code": 5}
                return self._send(code, reply)

            do_GET = do_POST = do_DELETE = _handle

        self.server, self.host = local_http_server(Handler)

    def route(self, method: str, path: str, query: dict, body: dict | None) -> tuple[int, dict]:
        if (method, path) == ("GET", f"{API}/healthz"):
            return 200, {"multi_user": False}
        if (method, path) == ("GET", f"{API}/experiments"):
            found = list(self.experiments.values())
            for p in json.loads(query.get("filter") or '{"predicates": []}')["predicates"]:
                assert p["operation"] in (1, "EQUALS"), p  # kfp's _FILTER_OPERATIONS['EQUALS'] is 1
                found = [e for e in found if e.get(p["key"]) == p["stringValue"]]
            return 200, ({"experiments": found, "total_size": len(found)} if found else {})
        if (method, path) == ("POST", f"{API}/experiments"):
            experiment = {"experiment_id": str(uuid.uuid4()), "display_name": body["display_name"],
                          "namespace": body.get("namespace") or "", "created_at": _now(), "storage_state": "AVAILABLE"}
            self.experiments[experiment["experiment_id"]] = experiment
            return 200, experiment
        if (method, path) == ("POST", f"{API}/recurringruns"):
            if body.get("experiment_id") not in self.experiments:
                return 400, {"error_message": "experiment not found", "code": 3}
            run = {**body, "recurring_run_id": str(uuid.uuid4()), "created_at": _now(), "updated_at": _now(),
                   "status": "ENABLED" if body.get("mode") == "ENABLE" else "DISABLED"}
            self.recurring_runs[run["recurring_run_id"]] = run
            return 200, run
        if (method, path) == ("GET", f"{API}/recurringruns"):
            found = [r for r in self.recurring_runs.values()
                     if not query.get("experiment_id") or r["experiment_id"] == query["experiment_id"]]
            start, size = int(query.get("page_token") or 0), int(query.get("page_size") or 10)
            page = found[start:start + size]
            more = start + size < len(found)
            reply = {"recurringRuns": page, "total_size": len(found)}  # the proto's field name (attribute_map)
            return 200, ({**reply, "next_page_token": str(start + size)} if more else reply) if page else {}
        if method == "DELETE" and path.startswith(f"{API}/recurringruns/"):
            del self.recurring_runs[path.rsplit("/", 1)[1]]
            return 200, {}
        if (method, path) == ("POST", f"{API}/runs"):
            run = {**body, "run_id": str(uuid.uuid4()), "created_at": _now(), "state": "PENDING"}
            self.runs[run["run_id"]] = run
            return 200, run
        raise KeyError(f"{method} {path}")

    def calls(self) -> list[tuple[str, str]]:
        """The requests other than health checks."""
        return [(r["method"], r["path"]) for r in self.requests if not r["path"].endswith("/healthz")]
