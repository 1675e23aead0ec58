// Validates custom resources (Flux, cert-manager, Prometheus Operator) against the CRD schemas
// shipped by the @kubernetes-models packages: kubernetes-validate has no schema for these kinds.
// Input: a JSON array of documents on stdin. Output: a JSON array, one entry per document,
// {"kind", "name", "errors": [messages]}. Exits 0 even when documents are invalid (the caller
// asserts on the result); exits 2 only on unusable input.

const PACKAGES = {
  "source.toolkit.fluxcd.io": "@kubernetes-models/flux-cd",
  "helm.toolkit.fluxcd.io": "@kubernetes-models/flux-cd",
  "kustomize.toolkit.fluxcd.io": "@kubernetes-models/flux-cd",
  "cert-manager.io": "@kubernetes-models/cert-manager",
  "monitoring.coreos.com": "@kubernetes-models/prometheus-operator",
};

async function modelFor(apiVersion, kind) {
  const [group, version] = String(apiVersion).split("/");
  const pkg = PACKAGES[group];
  if (!pkg || !version) throw new Error(`no schema package for apiVersion ${apiVersion}`);
  const mod = await import(`${pkg}/${group}/${version}`);
  const Model = mod[kind];
  if (!Model) throw new Error(`no model for ${apiVersion} ${kind}`);
  return Model;
}

function describe(err) {
  if (err && Array.isArray(err.errors)) {
    return err.errors.map(
      (e) => `${e.instancePath || "/"} ${e.message}${e.params ? " " + JSON.stringify(e.params) : ""}`,
    );
  }
  return [String(err && err.message ? err.message : err)];
}

async function readStdin() {
  let input = "";
  process.stdin.setEncoding("utf8");
  for await (const chunk of process.stdin) input += chunk;
  return input;
}

let docs;
try {
  docs = JSON.parse(await readStdin());
  if (!Array.isArray(docs)) throw new Error("expected a JSON array of documents");
} catch (err) {
  process.stderr.write(`validate-crds: ${err.message}\n`);
  process.exit(2);
}

const results = [];
for (const doc of docs) {
  const kind = doc ? doc.kind : undefined;
  const name = doc && doc.metadata ? doc.metadata.name : undefined;
  try {
    const Model = await modelFor(doc.apiVersion, doc.kind);
    new Model(doc).validate();
    results.push({ kind, name, errors: [] });
  } catch (err) {
    results.push({ kind, name, errors: describe(err) });
  }
}
process.stdout.write(JSON.stringify(results));
