"""Deploy step: roll the new champion out on the KServe InferenceService that serves users, when one
was promoted: to a canary share of traffic beside the previous champion (components/serving/canary.py
`roll_out`, Serverless or RawDeployment mode), or, with canary_percent 0 and at the first deployment,
100% at once (components/serving/kserve.py `deploy_champion`). Their docstrings say what is created
or patched, and the deployer Role of manifests/serving grants exactly that.
"""

from kfp.dsl.component_decorator import component  # `dsl.component` is absent when a step runs (_KFP_RUNTIME)

from selfguided.components.images import CPU_IMAGE


@component(base_image=CPU_IMAGE, install_kfp_package=False)  # the image has kfp and kubernetes
def deploy(promoted: bool, storage_uri: str, model_version: str, service_name: str, namespace: str,
           canary_percent: int = 10, node_selector: dict = {}, tolerations: list = []) -> str:
    """Roll the KServe InferenceService out to the new champion, only when one was promoted.

    Args:
        promoted: whether the register step promoted a new champion; False: nothing is changed.
        storage_uri: the champion's merged weights in the artifact store (`s3://.../merged`).
        model_version: the registered model version, e.g. `korean-writing-assistant/3`.
        service_name: the InferenceService to create or patch; "" = serving not configured.
        namespace: its namespace; "" = the namespace this step runs in (the profile namespace).
        canary_percent: traffic share (1-99) of the new champion beside the previous one, until
            `selfguided canary promote|rollback` or the monitor decides; 0 = 100% at once.
        node_selector: the GPU pool's node selector, for an InferenceService created here.
        tolerations: the GPU pool's tolerations, for an InferenceService created here.

    Returns:
        One line saying what was done: created, patched to 100%, or a canary started at N%.
    """
    from selfguided.components.serving.canary import roll_out

    message = roll_out(promoted, storage_uri, model_version, canary_percent=canary_percent, name=service_name,
                       namespace=namespace or None, node_selector=dict(node_selector) or None,
                       tolerations=list(tolerations) or None)
    print(f"[selfguided] deploy: {message}", flush=True)
    return message
