// node-oidc-provider configured like the Portcullis bench config, for `make bench` (bench/run.py).
//
// Usage: node provider.mjs CONFIG.json   (written by bench/run.py; see bench/README.md)
//
// What is equivalent to the Portcullis side, on purpose:
// - the same confidential clients (client_secret_basic) and redirect URI; one client signs with
//   RS256 and one with ES256 (Portcullis picks the algorithm per server, node per client);
// - JWT access tokens: every token request resolves to one resource server whose access tokens
//   are JWTs signed with the client's algorithm (Portcullis issues JWT access tokens too);
// - refresh-token rotation per client (Portcullis: per server, `disableRotation`);
// - an O(1) in-memory adapter (the stock one rebuilds a grant index on every write, which would
//   make node look slower than it is: notes/performance.md);
// - password login through an interaction form that checks a bcrypt cost-10 hash (native
//   `bcrypt`, like Portcullis's) and finishes the interaction with a 303 onwards.
// Minting for the token pools happens in-process through a second, admin-only port, so the
// benchmark never measures it.
import { readFileSync } from 'node:fs';
import http from 'node:http';
import crypto from 'node:crypto';

import bcrypt from 'bcrypt';
import Provider from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const RESOURCE = 'urn:portcullis-bench:api';

// ---- an O(1) in-memory adapter -------------------------------------------------------------
const store = new Map(); // `${model}:${id}` -> { payload, expiresAt }
const byUid = new Map();
const byUserCode = new Map();
const byGrant = new Map(); // grantId -> Set of keys, so revokeByGrantId is O(tokens of that grant)

class MemoryAdapter {
  constructor(model) {
    this.model = model;
  }

  key(id) {
    return `${this.model}:${id}`;
  }

  async upsert(id, payload, expiresIn) {
    const key = this.key(id);
    store.set(key, { payload, expiresAt: expiresIn ? Date.now() + expiresIn * 1000 : 0 });
    if (payload.uid) byUid.set(payload.uid, id);
    if (payload.userCode) byUserCode.set(payload.userCode, id);
    if (payload.grantId) {
      let keys = byGrant.get(payload.grantId);
      if (!keys) byGrant.set(payload.grantId, (keys = new Set()));
      keys.add(key);
    }
  }

  async find(id) {
    const entry = store.get(this.key(id));
    if (!entry) return undefined;
    if (entry.expiresAt && entry.expiresAt < Date.now()) {
      store.delete(this.key(id));
      return undefined;
    }
    return entry.payload;
  }

  async findByUid(uid) {
    const id = byUid.get(uid);
    return id === undefined ? undefined : this.find(id);
  }

  async findByUserCode(userCode) {
    const id = byUserCode.get(userCode);
    return id === undefined ? undefined : this.find(id);
  }

  async consume(id) {
    const entry = store.get(this.key(id));
    if (entry) entry.payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) {
    store.delete(this.key(id));
  }

  async revokeByGrantId(grantId) {
    const keys = byGrant.get(grantId);
    if (!keys) return;
    for (const key of keys) store.delete(key);
    byGrant.delete(grantId);
  }
}

// ---- keys, clients, account ----------------------------------------------------------------
function signingKey(type, options, alg) {
  // PEM first, JWK from a key object of its own (see tests/node/oidc-peer.mjs: exporting a JWK
  // from generateKeyPairSync's own key object can deadlock Node 20 in garbage collection).
  const { privateKey: pem } = crypto.generateKeyPairSync(type, {
    ...options,
    publicKeyEncoding: { type: 'spki', format: 'pem' },
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
  });
  const jwk = crypto.createPrivateKey(pem).export({ format: 'jwk' });
  return { ...jwk, alg, use: 'sig', kid: `${alg.toLowerCase()}-${crypto.randomUUID()}` };
}

const jwks = {
  keys: [
    signingKey('rsa', { modulusLength: 2048 }, 'RS256'),
    signingKey('ec', { namedCurve: 'P-256' }, 'ES256'),
  ],
};
const clientAlg = new Map(config.clients.map((c) => [c.client_id, c.alg]));
const clientRotates = new Map(config.clients.map((c) => [c.client_id, c.rotate]));
const user = config.user;

const provider = new Provider(config.issuer, {
  adapter: MemoryAdapter,
  jwks,
  cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
  clients: config.clients.map((c) => ({
    client_id: c.client_id,
    client_secret: c.client_secret,
    redirect_uris: c.redirect_uris,
    grant_types: ['authorization_code', 'refresh_token', 'client_credentials'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
    id_token_signed_response_alg: c.alg,
  })),
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'preferred_username'],
    groups: ['groups'],
  },
  scopes: ['openid', 'offline_access', 'email', 'profile', 'groups', 'api'],
  conformIdTokenClaims: false, // Portcullis puts the user claims into the ID token too
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => RESOURCE,
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resource, client) => ({
        scope: 'api',
        audience: RESOURCE,
        accessTokenFormat: 'jwt',
        accessTokenTTL: 3600,
        jwt: { sign: { alg: clientAlg.get(client.clientId) } },
      }),
    },
  },
  pkce: { required: () => false },
  ttl: {
    AccessToken: 3600,
    AuthorizationCode: 600,
    ClientCredentials: 3600,
    Grant: 30 * 24 * 3600,
    IdToken: 3600,
    Interaction: 3600,
    RefreshToken: 30 * 24 * 3600,
    Session: 24 * 3600,
  },
  rotateRefreshToken: (ctx) => clientRotates.get(ctx.oidc.client.clientId) === true,
  findAccount: (ctx, id) => ({
    accountId: id,
    claims: () => ({
      sub: id,
      email: user.email,
      email_verified: true,
      name: user.username,
      preferred_username: user.username,
      groups: user.groups,
    }),
  }),
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  loadExistingGrant: async (ctx) => {
    // Portcullis with skipApprovalScreen grants the requested scopes without a consent page;
    // node does the same here by granting what the client asked for.
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope(ctx.oidc.params.scope);
    grant.addResourceScope(RESOURCE, 'api');
    await grant.save();
    return grant;
  },
});

// ---- the password form (the interaction) --------------------------------------------------
async function readForm(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return new URLSearchParams(Buffer.concat(chunks).toString());
}

async function interaction(req, res) {
  const details = await provider.interactionDetails(req, res);
  if (req.method !== 'POST') {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end(`<form method="post"><input name="login"><input name="password" type="password"></form>`);
    return;
  }
  const form = await readForm(req);
  const ok =
    form.get('login') === user.email && (await bcrypt.compare(form.get('password') || '', user.hash));
  if (!ok) {
    res.writeHead(401, { 'content-type': 'text/plain' });
    res.end('Invalid username or password.');
    return;
  }
  await provider.interactionFinished(
    req,
    res,
    { login: { accountId: user.user_id } },
    { mergeWithLastSubmission: false },
  );
  void details;
}

const callback = provider.callback();
const server = http.createServer((req, res) => {
  if (req.url.startsWith('/interaction/')) {
    interaction(req, res).catch((err) => {
      res.writeHead(400, { 'content-type': 'text/plain' });
      res.end(String(err && err.message));
    });
    return;
  }
  callback(req, res);
});
server.keepAliveTimeout = 60_000;
server.on('connection', (socket) => socket.setNoDelay(true));

// ---- minting for the pools (admin port; never measured) -----------------------------------
async function mint(kind, clientId, n) {
  const client = await provider.Client.find(clientId);
  const scope = 'openid email profile groups offline_access';
  const out = [];
  for (let i = 0; i < n; i += 1) {
    const grant = new provider.Grant({ accountId: user.user_id, clientId });
    grant.addOIDCScope(scope);
    grant.addResourceScope(RESOURCE, 'api');
    const grantId = await grant.save();
    const common = {
      accountId: user.user_id,
      grantId,
      client,
      scope: `${scope} api`,
      resource: RESOURCE,
      authTime: Math.floor(Date.now() / 1000),
      claims: {},
    };
    if (kind === 'code') {
      const code = new provider.AuthorizationCode({ ...common, redirectUri: client.redirectUris[0] });
      out.push(await code.save());
    } else {
      const token = new provider.RefreshToken({ ...common, gty: 'authorization_code', rotations: 0 });
      out.push(await token.save());
    }
  }
  return out;
}

const admin = http.createServer(async (req, res) => {
  try {
    const url = new URL(req.url, 'http://127.0.0.1');
    if (url.pathname === '/ready') {
      res.end('ok');
      return;
    }
    const kind = url.searchParams.get('kind');
    const values = await mint(kind, url.searchParams.get('client'), Number(url.searchParams.get('n')));
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify(values));
  } catch (err) {
    res.writeHead(500, { 'content-type': 'text/plain' });
    res.end(String(err && err.stack));
  }
});

server.listen(config.port, '127.0.0.1');
admin.listen(config.admin_port, '127.0.0.1');
process.on('SIGTERM', () => {
  server.close();
  admin.close();
  process.exit(0);
});
