"""
deploy/ works as written: the Dockerfile, the compose file and the
Kubernetes manifests are valid, and they agree with each other and with
lbproxy about its command line, its config files, its ports and its paths.

No container engine or cluster runs here, so the checks are static: the
manifests against the Kubernetes API schemas that the C{kubernetes-validate}
package ships, the compose file against the Compose Specification's schema
(vendored in deploy/schemas/), and the image's command and the config files
through lbproxy's own option and config-file parsers (imported here, unlike
the other end-to-end tests: there is no process to run, only files to read).
One test runs the installed C{twistd lbproxy} with the compose config and
the image's HEALTHCHECK and the Kubernetes probes against it.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import attrs
import jsonschema
import kubernetes_validate.utils  # type: ignore[import-untyped]
import yaml
from twisted.python import usage
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from lbproxy.certs import (
    SERVER_CERTIFICATE,
    SERVER_KEY,
    certificatePEM,
    makeCertificateAuthority,
    makeServerCertificate,
    privateKeyPEM,
)
from lbproxy.cli.configfile import parseConfigText
from lbproxy.cli.options import Options
from lbproxy.listen import parseListen
from tests.support import fetch, freePort, runProgram, startTwistd

_ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), ".."))
_DEPLOY = os.path.join(_ROOT, "deploy")
_DOCKERFILE = os.path.join(_DEPLOY, "Dockerfile")
_COMPOSE = os.path.join(_DEPLOY, "compose.yaml")
_COMPOSE_CONFIG = os.path.join(_DEPLOY, "lbproxy.toml")
_KUBERNETES = os.path.join(_DEPLOY, "kubernetes")

_CERTIFICATES = "/etc/lbproxy/certs"
"""
Where the image, compose and Kubernetes put lbproxy's certificate; the
config files name their key and certificate there.
"""

_ENTRYPOINT = ["twistd", "-n", "--pidfile=", "lbproxy"]
_CLUSTER_DOMAIN = "svc.cluster.local"


# --- reading the files ----------------------------------------------------------


@attrs.frozen
class Instruction:
    """
    One Dockerfile instruction.

    @ivar keyword: Its keyword, upper case (C{FROM}, C{RUN}...).
    @ivar arguments: The rest, continuation lines joined.
    @ivar line: The line it starts on.
    """

    keyword: str
    arguments: str
    line: int

    def words(self) -> list[str]:
        """
        The arguments in exec form (a JSON array) or as shell words.
        """
        text = self.arguments.strip()
        if text.startswith("["):
            words = json.loads(text)
            assert isinstance(words, list)
            return [str(word) for word in words]
        return shlex.split(text)


def parseDockerfile(text: str) -> list[Instruction]:
    """
    The instructions of a Dockerfile: comment lines dropped, lines ending
    in a backslash joined to the next (enough for this project's own file;
    no heredocs, no escape directive).
    """
    instructions: list[Instruction] = []
    pending = ""
    start = 0
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("#"):
            continue
        if not pending:
            if not line.strip():
                continue
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        whole = pending + line
        pending = ""
        keyword, _, arguments = whole.strip().partition(" ")
        instructions.append(Instruction(keyword.upper(), arguments.strip(), start))
    assert not pending, "the Dockerfile ends in a continuation line"
    return instructions


def finalStage(instructions: Sequence[Instruction]) -> list[Instruction]:
    """
    The instructions of the last stage (from its C{FROM} on): the image.
    """
    starts = [i for i, instruction in enumerate(instructions) if instruction.keyword == "FROM"]
    assert starts, "no FROM"
    return list(instructions[starts[-1] :])


def only(instructions: Sequence[Instruction], keyword: str) -> Instruction:
    """
    The one instruction with C{keyword}.
    """
    found = [i for i in instructions if i.keyword == keyword]
    assert len(found) == 1, f"{len(found)} {keyword} instructions in the image, not 1"
    return found[0]


def healthcheckCommand(instruction: Instruction) -> list[str]:
    """
    The command of a C{HEALTHCHECK [OPTIONS] CMD [...]} instruction.
    """
    options, keyword, command = instruction.arguments.partition("CMD ")
    assert keyword, f"HEALTHCHECK without CMD: {instruction.arguments!r}"
    assert all(word.startswith("--") for word in options.split()), options
    return Instruction("CMD", command, instruction.line).words()


def imageCommand() -> tuple[list[str], list[str]]:
    """
    The image's ENTRYPOINT and CMD.
    """
    with open(_DOCKERFILE) as f:
        image = finalStage(parseDockerfile(f.read()))
    return only(image, "ENTRYPOINT").words(), only(image, "CMD").words()


def readYAML(path: str) -> list[Any]:
    """
    The documents of the YAML file at C{path}.
    """
    with open(path) as f:
        return [document for document in yaml.safe_load_all(f) if document is not None]


def kubernetesDocuments() -> Iterator[tuple[str, Mapping[str, Any]]]:
    """
    Every object in deploy/kubernetes/, with the file it is in.
    """
    for name in sorted(os.listdir(_KUBERNETES)):
        if name.endswith((".yaml", ".yml")):
            for document in readYAML(os.path.join(_KUBERNETES, name)):
                yield name, document


def kubernetesObject(kind: str, name: str) -> Mapping[str, Any]:
    """
    The object of C{kind} named C{name} in deploy/kubernetes/.
    """
    found = [
        document
        for _, document in kubernetesDocuments()
        if document["kind"] == kind and document["metadata"]["name"] == name
    ]
    assert len(found) == 1, f"{len(found)} {kind} named {name!r} in deploy/kubernetes/"
    return found[0]


def container(deployment: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    """
    The container named C{name} in C{deployment}'s pod template.
    """
    containers: list[Mapping[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    found = [c for c in containers if c["name"] == name]
    assert len(found) == 1, f"{len(found)} containers named {name!r}"
    return found[0]


def namedPort(containerSpec: Mapping[str, Any], port: int | str) -> int:
    """
    The number of C{port}, a number or the name of one of the container's
    ports (as probes and a Service's targetPort name them).
    """
    if isinstance(port, int):
        return port
    numbers = [p["containerPort"] for p in containerSpec["ports"] if p.get("name") == port]
    assert len(numbers) == 1, f"no container port named {port!r}"
    return int(numbers[0])


def kubernetesConfigText() -> str:
    """
    The lbproxy.toml of the ConfigMap lbproxy mounts.
    """
    text = kubernetesObject("ConfigMap", "lbproxy-config")["data"]["lbproxy.toml"]
    assert isinstance(text, str)
    return text


def readText(path: str) -> str:
    """
    The text of the file at C{path}.
    """
    with open(path) as f:
        return f.read()


# --- lbproxy's view of them -------------------------------------------------------


def writeCertificates(directory: str) -> None:
    """
    Write a server key and certificate, as C{python -m lbproxy.certs} names
    them, into C{directory}.
    """
    os.makedirs(directory)
    caKey, caCertificate = makeCertificateAuthority()
    key, certificate = makeServerCertificate(caKey, caCertificate, ["localhost"])
    with open(os.path.join(directory, SERVER_KEY), "wb") as f:
        f.write(privateKeyPEM(key))
    with open(os.path.join(directory, SERVER_CERTIFICATE), "wb") as f:
        f.write(certificatePEM(certificate))


def parseCommand(
    testCase: SynchronousTestCase, arguments: Sequence[str], configText: str, configPath: str
) -> Options:
    """
    Parse C{arguments} (lbproxy's, after C{twistd ... lbproxy}) with lbproxy's
    own parser, C{configText} standing for the file at C{configPath}, and
    the certificates it names under L{_CERTIFICATES} standing in a temporary
    directory.

    @raise usage.UsageError: As lbproxy would refuse to start.
    """
    assert list(arguments[:2]) == ["--config", configPath], arguments
    certificates = os.path.abspath(testCase.mktemp())
    writeCertificates(certificates)
    text = configText.replace(_CERTIFICATES + "/", certificates + "/")
    options = Options()
    options.parseArguments(list(arguments), parseConfigText(text, configPath))
    assert options.config is not None
    return options


def certificateFiles(configText: str) -> set[str]:
    """
    The key and certificate files the C{ssl:} listeners of a config file
    name.
    """
    files: set[str] = set()
    for description in parseConfigText(configText, "lbproxy.toml").data["listen"]:
        spec = parseListen(description)
        files.update(p for p in (spec.privateKey, spec.certKey, spec.extraCertChain) if p)
    return files


def endpointPort(description: str) -> tuple[int, str]:
    """
    The port and interface of a C{tcp:} server endpoint string, as Twisted
    reads C{tcp:PORT[:interface=ADDRESS]} or C{tcp:port=PORT...}.
    """
    kind, *parts = description.split(":")
    assert kind == "tcp", f"{description!r} is not a tcp: endpoint"
    positional = [p for p in parts if "=" not in p]
    named = dict(p.split("=", 1) for p in parts if "=" in p)
    port = named.get("port", positional[0] if positional else None)
    assert port is not None, description
    return int(port), named.get("interface", "")


@attrs.frozen
class Ports:
    """
    The ports a config file has lbproxy use.

    @ivar listen: The C{ssl:} listeners' ports.
    @ivar admin: The admin API's port and interface.
    @ivar metrics: The metrics listener's port and interface.
    """

    listen: frozenset[int]
    admin: tuple[int, str]
    metrics: tuple[int, str]


def portsOf(options: Options) -> Ports:
    """
    The ports the configuration C{options} parsed asks for.
    """
    config = options.config
    assert config is not None
    assert config.admin is not None, "no admin API"
    assert config.metrics is not None, "no metrics listener"
    for spec in config.listens:
        assert spec.isTLS, f"{spec.description!r} is not an ssl: listener"
    return Ports(
        listen=frozenset(spec.port for spec in config.listens if spec.port is not None),
        admin=endpointPort(config.admin),
        metrics=endpointPort(config.metrics),
    )


def dnsBackendsSupported() -> bool:
    """
    Whether this lbproxy takes C{dns:NAME:PORT} backends (issue 16 adds
    them).
    """
    try:
        Options().parseArguments(["--listen", "tcp:0", "--backends", "dns:localhost:80"])
    except usage.UsageError:
        return False
    return True


# --- the Dockerfile ------------------------------------------------------------------


class DockerfileTests(SynchronousTestCase):
    """
    deploy/Dockerfile builds the image the compose file and the Kubernetes
    manifests run.
    """

    def setUp(self) -> None:
        self.instructions = parseDockerfile(readText(_DOCKERFILE))
        self.image = finalStage(self.instructions)

    def test_slimPythonBase(self) -> None:
        """
        Every stage starts from an official slim Python image.
        """
        bases = [i.words()[0] for i in self.instructions if i.keyword == "FROM"]
        self.assertTrue(bases)
        for base in bases:
            self.assertRegex(base, r"^python:3\.\d+-slim$")

    def test_nonRootUser(self) -> None:
        """
        The image runs as a numeric uid other than 0 (numeric, so that
        Kubernetes' runAsNonRoot can check it).
        """
        user = only(self.image, "USER").arguments.split(":")[0]
        self.assertTrue(user.isdigit(), user)
        self.assertNotEqual(int(user), 0)

    def test_realInstall(self) -> None:
        """
        lbproxy is installed with C{pip install .}, not editable (twistd
        would not find the plugin), and the build checks that twistd does.
        """
        runs = " ".join(i.arguments for i in self.instructions if i.keyword == "RUN")
        self.assertIn("pip install .", runs)
        self.assertNotIn(" -e ", runs)
        self.assertNotIn("--editable", runs)
        self.assertIn("twistd lbproxy --version", runs)

    def test_copiesExist(self) -> None:
        """
        What the build stage copies from the context exists in the
        repository and is let through by deploy/Dockerfile.dockerignore,
        and includes every file setup.cfg builds the package from.
        """
        ignore = readText(os.path.join(_DEPLOY, "Dockerfile.dockerignore")).splitlines()
        included = {line[1:].strip().rstrip("/") for line in ignore if line.startswith("!")}
        copied: list[str] = []
        for instruction in self.instructions:
            words = instruction.words() if instruction.keyword == "COPY" else []
            if words and not any(w.startswith("--from") for w in words):
                copied.extend(w.rstrip("/") for w in words[:-1] if not w.startswith("--"))
        self.assertTrue(copied)
        for source in copied:
            self.assertTrue(os.path.exists(os.path.join(_ROOT, source)), source)
            self.assertIn(source, included)
        for needed in ("pyproject.toml", "setup.cfg", "README.md", "lbproxy", "twisted"):
            self.assertIn(needed, copied)

    def test_command(self) -> None:
        """
        The image runs C{twistd -n --pidfile= lbproxy --config
        /etc/lbproxy/lbproxy.toml}: in the foreground, with no pid file, and
        the config file where compose and Kubernetes mount it.
        """
        entrypoint, command = imageCommand()
        self.assertEqual(entrypoint, _ENTRYPOINT)
        self.assertEqual(command, ["--config", "/etc/lbproxy/lbproxy.toml"])

    def test_healthcheck(self) -> None:
        """
        The HEALTHCHECK runs Python (the slim image has no curl) against
        the admin API's C{GET /pools} on loopback.
        """
        command = healthcheckCommand(only(self.image, "HEALTHCHECK"))
        self.assertEqual(command[:2], ["python", "-c"])
        self.assertIn("'127.0.0.1', 9901", command[2])
        self.assertIn("'/pools'", command[2])
        compile(command[2], "HEALTHCHECK", "exec")

    def test_exposedPortsAreTheConfigs(self) -> None:
        """
        The image exposes the HTTPS and metrics ports of both config files
        it is run with, and not the loopback-only admin API.
        """
        exposed = {int(port.split("/")[0]) for port in only(self.image, "EXPOSE").words()}
        _, command = imageCommand()
        for text in (readText(_COMPOSE_CONFIG), kubernetesConfigText()):
            if "dns:" in text and not dnsBackendsSupported():
                text = text.replace("dns:", "")
            ports = portsOf(parseCommand(self, command, text, command[1]))
            self.assertEqual(exposed, set(ports.listen) | {ports.metrics[0]})
            self.assertNotIn(ports.admin[0], exposed)


# --- compose ----------------------------------------------------------------------------


class ComposeTests(SynchronousTestCase):
    """
    deploy/compose.yaml is the write-up's lab: two backends and lbproxy on
    port 443, with certificates from C{python -m lbproxy.certs}.
    """

    def setUp(self) -> None:
        [self.compose] = readYAML(_COMPOSE)
        self.services = self.compose["services"]
        self.lbproxy = self.services["lbproxy"]
        self.entrypoint, self.command = imageCommand()

    def options(self) -> Options:
        """
        The image's command, parsed with deploy/lbproxy.toml as its config.
        """
        return parseCommand(self, self.command, readText(_COMPOSE_CONFIG), self.command[1])

    def test_schema(self) -> None:
        """
        The file is valid under the Compose Specification's JSON schema.
        """
        with open(os.path.join(_DEPLOY, "schemas", "compose-spec.json")) as f:
            schema = json.load(f)
        jsonschema.Draft7Validator.check_schema(schema)
        errors = [
            f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
            for e in jsonschema.Draft7Validator(schema).iter_errors(self.compose)
        ]
        self.assertEqual(errors, [])

    def test_schemaRefusesMistakes(self) -> None:
        """
        The schema check would catch a misspelt key.
        """
        with open(os.path.join(_DEPLOY, "schemas", "compose-spec.json")) as f:
            validator = jsonschema.Draft7Validator(json.load(f))
        broken = {"services": {"lbproxy": {"image": "lbproxy", "port": ["443:8443"]}}}
        self.assertFalse(validator.is_valid(broken))

    def test_builtFromTheDockerfile(self) -> None:
        """
        lbproxy runs the image deploy/Dockerfile builds from the
        repository root, with the image's own command.
        """
        build = self.lbproxy["build"]
        context = os.path.normpath(os.path.join(_DEPLOY, build["context"]))
        self.assertEqual(context, _ROOT)
        self.assertEqual(os.path.join(context, build["dockerfile"]), _DOCKERFILE)
        self.assertNotIn("command", self.lbproxy)
        self.assertNotIn("entrypoint", self.lbproxy)

    def test_configParses(self) -> None:
        """
        The image's command with deploy/lbproxy.toml is a configuration
        lbproxy accepts: TLS with the certificates in /etc/lbproxy/certs,
        the admin API on loopback at the port the HEALTHCHECK asks.
        """
        ports = portsOf(self.options())
        self.assertEqual(ports.admin, (9901, "127.0.0.1"))

    def test_ports(self) -> None:
        """
        The host's port 443 goes to the container's HTTPS listener, and
        the metrics port is published on the host's loopback.
        """
        ports = portsOf(self.options())
        published: dict[int, tuple[str, int]] = {}
        for mapping in self.lbproxy["ports"]:
            *host, target = str(mapping).split(":")
            hostIP, hostPort = (["0.0.0.0", *host] if len(host) == 1 else host)[-2:]
            published[int(target)] = (hostIP, int(hostPort))
        [listen] = ports.listen
        self.assertEqual(published[listen], ("0.0.0.0", 443))
        self.assertEqual(published[ports.metrics[0]], ("127.0.0.1", ports.metrics[0]))
        self.assertNotIn(ports.admin[0], published)

    def test_mounts(self) -> None:
        """
        The config file is mounted where the image's command reads it, and
        the certificate volume where the config names the key and
        certificate; the C{certs} service writes that volume with
        C{python -m lbproxy.certs}.
        """
        volumes = {}
        for volume in self.lbproxy["volumes"]:
            source, target, *mode = volume.split(":")
            self.assertEqual(mode, ["ro"])
            volumes[target] = source
        configPath = self.command[1]
        self.assertEqual(
            os.path.normpath(os.path.join(_DEPLOY, volumes[configPath])), _COMPOSE_CONFIG
        )
        self.assertEqual(
            certificateFiles(readText(_COMPOSE_CONFIG)),
            {f"{_CERTIFICATES}/{SERVER_KEY}", f"{_CERTIFICATES}/{SERVER_CERTIFICATE}"},
        )
        certsVolume = volumes[_CERTIFICATES]
        self.assertIn(certsVolume, self.compose["volumes"])
        certs = self.services["certs"]
        self.assertIn(f"{certsVolume}:{_CERTIFICATES}", certs["volumes"])
        self.assertIn(f"python -m lbproxy.certs {_CERTIFICATES}", " ".join(certs["entrypoint"]))
        self.assertEqual(
            self.lbproxy["depends_on"]["certs"], {"condition": "service_completed_successfully"}
        )

    def test_backends(self) -> None:
        """
        The pool's backends are the compose services C{backend1} and
        C{backend2}, which serve C{<p>HTTP Server-1</p>} and
        C{<p>HTTP Server-2</p>} on the port the pool names.
        """
        config = self.options().config
        assert config is not None
        [pool] = config.pools
        backends = sorted((b.host, b.port) for b in pool.backends)
        self.assertEqual(backends, [("backend1", 80), ("backend2", 80)])
        for number, (host, port) in enumerate(backends, 1):
            command = " ".join(self.services[host]["command"])
            self.assertIn(f"printf '<p>HTTP Server-{number}</p>'", command)
            self.assertIn(f"http.server {port} ", command)
            self.assertIn(host, self.lbproxy["depends_on"])

    def test_stopGracePeriod(self) -> None:
        """
        C{docker compose stop} waits longer than lbproxy's drain.
        """
        config = self.options().config
        assert config is not None
        grace = self.lbproxy["stop_grace_period"]
        self.assertTrue(grace.endswith("s"), grace)
        self.assertGreater(int(grace[:-1]), config.drainTimeout)


# --- Kubernetes -----------------------------------------------------------------------


class KubernetesTests(SynchronousTestCase):
    """
    deploy/kubernetes/ runs two lbproxy replicas behind a Service, with the
    config from a ConfigMap, the certificate from a Secret, backends found
    through a headless Service's DNS name, a disruption budget, probes and
    a Prometheus scrape.
    """

    def setUp(self) -> None:
        self.deployment = kubernetesObject("Deployment", "lbproxy")
        self.pod = self.deployment["spec"]["template"]
        self.container = container(self.deployment, "lbproxy")
        self.entrypoint, self.command = imageCommand()

    def options(self, exact: bool = True) -> Options:
        """
        The container's arguments, parsed with the ConfigMap's config.

        @param exact: Skip the test where this lbproxy cannot take the
            config's C{dns:} backends (issue 16 adds them); if false, read
            them as host names instead, for what does not depend on them.
        """
        text = kubernetesConfigText()
        if not dnsBackendsSupported():
            if exact:
                raise SkipTest("this lbproxy has no dns: backends yet (issue 16)")
            text = text.replace("dns:", "")
        arguments = self.container["args"]
        return parseCommand(self, arguments, text, arguments[1])

    def test_schemas(self) -> None:
        """
        Every object is valid (unknown fields included) under the oldest
        and the newest Kubernetes API schemas kubernetes-validate ships.
        """
        versions = sorted(
            set(kubernetes_validate.utils.all_versions()),
            key=lambda v: tuple(int(n) for n in v.split(".")),
        )
        documents = list(kubernetesDocuments())
        self.assertGreaterEqual(len(documents), 6)
        for version in (versions[0], versions[-1]):
            for name, document in documents:
                try:
                    kubernetes_validate.utils.validate(document, version, strict=True)
                except kubernetes_validate.utils.ValidationError as e:
                    self.fail(f"{name}: {document['kind']} (Kubernetes {version}): {e.message}")

    def test_schemasRefuseMistakes(self) -> None:
        """
        The schema check would catch a misspelt field.
        """
        broken = json.loads(json.dumps(self.deployment))
        broken["spec"]["template"]["spec"]["containers"][0]["port"] = []
        self.assertRaises(
            kubernetes_validate.utils.ValidationError,
            kubernetes_validate.utils.validate,
            broken,
            kubernetes_validate.utils.latest_version(),
            strict=True,
        )

    def test_configParses(self) -> None:
        """
        The container's arguments (the image's, and C{--watch-config} so
        that a ConfigMap change is applied without a restart) and the
        ConfigMap's config are a configuration lbproxy accepts.
        """
        self.assertEqual(self.container["args"], [*self.command, "--watch-config"])
        options = self.options()
        self.assertTrue(options["watch-config"])
        ports = portsOf(options)
        self.assertEqual(ports.admin, (9901, "127.0.0.1"))

    def test_twoReplicas(self) -> None:
        """
        Two replicas, rolled one at a time without losing one, and a
        disruption budget that keeps one serving; the Service and the
        budget select the Deployment's pods.
        """
        spec = self.deployment["spec"]
        self.assertEqual(spec["replicas"], 2)
        self.assertEqual(spec["strategy"]["rollingUpdate"]["maxUnavailable"], 0)
        labels = self.pod["metadata"]["labels"]
        selectors = [
            spec["selector"]["matchLabels"],
            kubernetesObject("Service", "lbproxy")["spec"]["selector"],
            kubernetesObject("PodDisruptionBudget", "lbproxy")["spec"]["selector"]["matchLabels"],
        ]
        for selector in selectors:
            self.assertTrue(selector)
            self.assertLessEqual(selector.items(), labels.items())
        budget = kubernetesObject("PodDisruptionBudget", "lbproxy")["spec"]
        self.assertLess(budget.get("maxUnavailable", 0), spec["replicas"])

    def test_ports(self) -> None:
        """
        The container ports are the config's HTTPS and metrics listeners
        and the image's EXPOSE; the Service's port 443 targets the HTTPS
        one; the probes and the Prometheus annotations name the metrics
        listener, which is not on loopback.
        """
        ports = portsOf(self.options(exact=False))
        declared = {p["containerPort"] for p in self.container["ports"]}
        [listen] = ports.listen
        metrics, interface = ports.metrics
        self.assertEqual(declared, {listen, metrics})
        self.assertNotIn(interface, ("127.0.0.1", "::1", "localhost"))
        with open(_DOCKERFILE) as f:
            exposed = only(finalStage(parseDockerfile(f.read())), "EXPOSE").words()
        self.assertEqual({int(p.split("/")[0]) for p in exposed}, declared)

        [servicePort] = kubernetesObject("Service", "lbproxy")["spec"]["ports"]
        self.assertEqual(servicePort["port"], 443)
        self.assertEqual(namedPort(self.container, servicePort["targetPort"]), listen)

        for probe in ("readinessProbe", "livenessProbe"):
            check = self.container[probe]["httpGet"]
            self.assertEqual(check["path"], "/metrics")
            self.assertEqual(namedPort(self.container, check["port"]), metrics)
        annotations = self.pod["metadata"]["annotations"]
        self.assertEqual(annotations["prometheus.io/scrape"], "true")
        self.assertEqual(annotations["prometheus.io/port"], str(metrics))
        self.assertEqual(annotations["prometheus.io/path"], "/metrics")

    def test_mounts(self) -> None:
        """
        One projected volume at /etc/lbproxy holds the config file where
        the arguments name it (from the ConfigMap) and the key and
        certificate where the config names them (from the Secret), the
        paths the image and compose use.
        """
        mounts = {m["mountPath"]: m for m in self.container["volumeMounts"]}
        volumes = {v["name"]: v for v in self.pod["spec"]["volumes"]}
        mount = mounts["/etc/lbproxy"]
        self.assertTrue(mount["readOnly"])
        provided: dict[str, tuple[str, str, str]] = {}
        for source in volumes[mount["name"]]["projected"]["sources"]:
            [(kind, projection)] = source.items()
            for item in projection["items"]:
                path = f"{mount['mountPath']}/{item['path']}"
                provided[path] = (kind, projection["name"], item["key"])

        configPath = self.container["args"][1]
        self.assertEqual(configPath, self.command[1])
        self.assertEqual(provided[configPath], ("configMap", "lbproxy-config", "lbproxy.toml"))

        files = certificateFiles(kubernetesConfigText())
        self.assertEqual(
            files, {f"{_CERTIFICATES}/{SERVER_KEY}", f"{_CERTIFICATES}/{SERVER_CERTIFICATE}"}
        )
        self.assertEqual(
            provided[f"{_CERTIFICATES}/{SERVER_KEY}"], ("secret", "lbproxy-tls", "tls.key")
        )
        self.assertEqual(
            provided[f"{_CERTIFICATES}/{SERVER_CERTIFICATE}"], ("secret", "lbproxy-tls", "tls.crt")
        )

    def test_unprivileged(self) -> None:
        """
        The pod runs as the image's user, not root, with a read-only root
        filesystem (a memory-backed /tmp beside it), no capabilities and
        no privilege escalation.
        """
        with open(_DOCKERFILE) as f:
            user = only(finalStage(parseDockerfile(f.read())), "USER").arguments
        uid, gid = (int(n) for n in user.split(":"))
        security = self.pod["spec"]["securityContext"]
        self.assertTrue(security["runAsNonRoot"])
        self.assertEqual((security["runAsUser"], security["runAsGroup"]), (uid, gid))
        self.assertEqual(security["fsGroup"], gid)
        own = self.container["securityContext"]
        self.assertTrue(own["readOnlyRootFilesystem"])
        self.assertFalse(own["allowPrivilegeEscalation"])
        self.assertEqual(own["capabilities"]["drop"], ["ALL"])
        self.assertIn("/tmp", [m["mountPath"] for m in self.container["volumeMounts"]])

    def test_resources(self) -> None:
        """
        The container asks for CPU and memory and has a memory limit.
        """
        resources = self.container["resources"]
        self.assertEqual(set(resources["requests"]), {"cpu", "memory"})
        self.assertIn("memory", resources["limits"])

    def test_drainFitsTheGracePeriod(self) -> None:
        """
        The pause before SIGTERM and lbproxy's drain end before the kubelet
        kills the pod.
        """
        config = self.options(exact=False).config
        assert config is not None
        pause = self.container["lifecycle"]["preStop"]["exec"]["command"]
        self.assertEqual(pause[0], "sleep")
        grace = self.pod["spec"]["terminationGracePeriodSeconds"]
        self.assertGreater(grace, int(pause[1]) + config.drainTimeout)

    def test_dnsBackendsAreTheHeadlessService(self) -> None:
        """
        The pool's backends are every address of the headless Service
        C{backend} (clusterIP None), at the port its pods serve on.
        """
        data = parseConfigText(kubernetesConfigText(), "lbproxy.toml").data
        [pool] = data["pools"].values()
        [source] = pool["backends"]
        kind, name, port = source.split(":")
        self.assertEqual(kind, "dns")
        service = kubernetesObject("Service", "backend")
        self.assertEqual(service["spec"]["clusterIP"], "None")
        namespace = service["metadata"].get("namespace", "default")
        self.assertEqual(name, f"{service['metadata']['name']}.{namespace}.{_CLUSTER_DOMAIN}")
        backend = kubernetesObject("Deployment", "backend")
        [servicePort] = service["spec"]["ports"]
        self.assertEqual(servicePort["port"], int(port))
        self.assertEqual(
            namedPort(container(backend, "backend"), servicePort["targetPort"]), int(port)
        )
        labels = backend["spec"]["template"]["metadata"]["labels"]
        self.assertLessEqual(service["spec"]["selector"].items(), labels.items())


# --- the health check, run -------------------------------------------------------------


class HealthCheckTests(TestCase):
    """
    The image's HEALTHCHECK and the Kubernetes probes, run against the
    installed C{twistd lbproxy} with deploy/lbproxy.toml (its ports and
    certificate paths moved to this machine's free ports and a temporary
    directory).
    """

    async def test_healthcheckAndProbes(self) -> None:
        """
        The HEALTHCHECK command exits 0 while lbproxy serves and non-zero
        once it has stopped; the probes' C{GET /metrics} answers 200.
        """
        with open(_DOCKERFILE) as f:
            image = finalStage(parseDockerfile(f.read()))
        command = healthcheckCommand(only(image, "HEALTHCHECK"))
        self.assertEqual(command[0], "python")

        directory = os.path.abspath(self.mktemp())
        certificates = os.path.join(directory, "certs")
        writeCertificates(certificates)
        text = readText(_COMPOSE_CONFIG).replace(_CERTIFICATES + "/", certificates + "/")
        configPath = os.path.join(directory, "lbproxy.toml")
        with open(configPath, "w") as f:
            f.write(text)
        admin, metrics = freePort(), freePort()
        key = os.path.join(certificates, SERVER_KEY)
        cert = os.path.join(certificates, SERVER_CERTIFICATE)
        process = await startTwistd(
            self,
            [
                "--config",
                configPath,
                "--listen",
                f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}",
                "--admin",
                f"tcp:{admin}:interface=127.0.0.1",
                "--metrics",
                f"tcp:{metrics}:interface=127.0.0.1",
                "--health-interval",
                "0",
            ],
            directory,
        )
        self.assertEqual(command[2].count("9901"), 1)
        healthcheck = [sys.executable, *command[1:2], command[2].replace("9901", str(admin))]

        result = await runProgram(healthcheck, directory)
        self.assertEqual(result.code, 0, result.combined)

        probe = kubernetesObject("Deployment", "lbproxy")
        path = container(probe, "lbproxy")["readinessProbe"]["httpGet"]["path"]
        status, body = await fetch(f"http://127.0.0.1:{metrics}{path}")
        self.assertEqual(status, 200, body)

        await process.stop()
        result = await runProgram(healthcheck, directory)
        self.assertNotEqual(result.code, 0)
