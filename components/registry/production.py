"""The production-trace contract: what every answer the champion serves leaves in MLflow, so the
serving side (which writes traces) and the monitor (which reads, judges and compares them) agree on
one shape. Names only here; the writer and the reader live beside their code.

One trace per served answer, in the experiment `PRODUCTION_EXPERIMENT` (its name is a setting):

- name `SERVED_TRACE_NAME`; request `{"messages": [...]}` (OpenAI chat messages, personal data
  redacted before it leaves the pod); response `{"answer": "..."}` (redacted alike);
- tags (all strings): see `TAG_*` below;
- the root span's attributes: latency, token counts (`ATTR_*`).

The category comes from the client (OpenAI's request `metadata`, key `category`) or, when absent or
unknown, from a classifier; `TAG_CATEGORY_SOURCE` says which.
"""

PRODUCTION_EXPERIMENT = "selfguided-production"
SERVED_TRACE_NAME = "served_answer"

TAG_CATEGORY = "category"
TAG_CATEGORY_SOURCE = "category_source"  # "client" | "classifier:<name>"
TAG_REGISTERED_MODEL = "registered_model"
TAG_MODEL_VERSION = "model_version"  # the registered model version number, e.g. "3"
TAG_ALIAS = "alias"  # the alias the version was served as ("champion", ...); "" when served by version
TAG_DEPLOYMENT = "deployment"  # "stable" | "canary": which side of a canary rollout answered
TAG_REDACTIONS = "redactions"  # how many pieces of personal data were replaced
TAG_CLIENT_CATEGORY = "client_category"  # what the client sent when it is no known category (then classified)
TAG_SERVED_MODEL = "served_model"  # the model name clients send (the endpoint's)

DEPLOYMENT_STABLE = "stable"
DEPLOYMENT_CANARY = "canary"

CATEGORY_METADATA_KEY = "category"  # in the chat request's `metadata`

ATTR_LATENCY_MS = "latency_ms"
ATTR_PROMPT_TOKENS = "prompt_tokens"
ATTR_COMPLETION_TOKENS = "completion_tokens"
ATTR_STREAM = "stream"  # true when the answer was streamed (traced once the stream ended)
ATTR_FINISH_REASON = "finish_reason"  # "stop" | "length" | "cancelled" (the client went away mid-stream)
