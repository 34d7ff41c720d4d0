"""Deploy step: point the KServe InferenceService that serves users at the new champion, when one
was promoted. The client is components/serving/kserve.py (`deploy_champion`); its docstring says
what is created or patched, and which RBAC the pipeline's ServiceAccount needs.
"""

from kfp.dsl.component_decorator import component  # `dsl.component` is absent when a step runs (_KFP_RUNTIME)

from selfguided.components.images import CPU_IMAGE


@component(base_image=CPU_IMAGE, install_kfp_package=False)  # the image has kfp and kubernetes
def deploy(promoted: bool, storage_uri: str, model_version: str, service_name: str, namespace: str,
           node_selector: dict = {}, tolerations: list = []) -> str:
    """Point the KServe InferenceService at the new champion, only when one was promoted.

    Args:
        promoted: whether the register step promoted a new champion; False: nothing is changed.
        storage_uri: the champion's merged weights in the artifact store (`s3://.../merged`).
        model_version: the registered model version, e.g. `korean-writing-assistant/3`.
        service_name: the InferenceService to create or patch; "" = serving not configured.
        namespace: its namespace; "" = the namespace this step runs in (the profile namespace).
        node_selector: the GPU pool's node selector, for an InferenceService created here.
        tolerations: the GPU pool's tolerations, for an InferenceService created here.

    Returns:
        One line saying what was done.
    """
    from selfguided.components.serving.kserve import deploy_champion

    message = deploy_champion(promoted, storage_uri, model_version, name=service_name, namespace=namespace or None,
                              node_selector=dict(node_selector) or None, tolerations=list(tolerations) or None)
    print(f"[selfguided] deploy: {message}", flush=True)
    return message
