// An upstream OpenID Connect / OAuth2 provider for the connector tests: node-oidc-provider, a
// certified implementation independent of ours, on a loopback port chosen by the OS.
//
// Usage: node oidc-peer.mjs CONFIG.json
//   CONFIG: {"clients": [...node-oidc-provider client metadata...],
//            "accounts": {"<id>": {<claims>}}, "adminToken": "...",
//            "tls": {"cert": "path", "key": "path"} | null}
// Prints one line `READY <port>` on stdout once it listens; every log goes to stderr.
//
// Test controls under /admin/ (JSON, header `x-admin-token` must match adminToken):
//   PUT    /admin/accounts/<id>   body = claims        create or replace an account
//                                                      ("disabled": true makes it unknown)
//   DELETE /admin/accounts/<id>                        remove an account (refresh then fails)
//   POST   /admin/rotate-keys     {"keepOld": bool}    new signing key; the old one stays in the
//                                                      JWKS only when keepOld (key rollover)
//   POST   /admin/mutate-next-token {"claims": {...}, "header": {...}, "resign": bool,
//                                   "foreignKey": bool, "hmacKey": "..."}
//          the next token response's id_token gets these claims; resign=false keeps the old
//          signature (a tampered token); foreignKey signs with a key outside the JWKS;
//          header alg "none" drops the signature, "HS256" signs with hmacKey
//   POST   /admin/refresh-delay   {"ms": n}            hold every token call this long
//   GET    /admin/stats                               counts of token-endpoint grants
//
// Refresh tokens rotate on every use (rotateRefreshToken: true); reusing a consumed one revokes
// the whole grant, as real providers such as Okta and Auth0 do, which is what makes concurrent
// refreshes dangerous for a relying party (Dex #2547).

import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';

import Provider from 'oidc-provider';
// The provider's own in-memory adapter, but one store for every Provider instance we create:
// a key rotation swaps the instance and sessions, grants and refresh tokens must survive it.
import { createMemoryAdapter } from 'oidc-provider/lib/adapters/memory_adapter.js';

const config = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const accounts = new Map(Object.entries(config.accounts || {}));
const cookieKey = crypto.randomBytes(32).toString('hex');
const stats = { authorization_code: 0, refresh_token: 0, refresh_token_refused: 0 };
const sharedAdapter = createMemoryAdapter(0);
let mutation = null;
let refreshDelayMs = 0;

// Generated as PEM, then exported as a JWK from a key object of its own: exporting the JWK
// straight from generateKeyPairSync's key object can deadlock Node 20 for good (seen here:
// a garbage collection inside ExportJWKRsaKey runs the finished key-generation job's destructor,
// which waits for the mutex the export holds), and the peer never prints READY.
function newKey() {
  const { privateKey: pem } = crypto.generateKeyPairSync('rsa', {
    modulusLength: 2048,
    publicKeyEncoding: { type: 'spki', format: 'pem' },
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
  });
  const jwk = crypto.createPrivateKey(pem).export({ format: 'jwk' });
  return { ...jwk, kid: crypto.randomBytes(8).toString('hex'), alg: 'RS256', use: 'sig' };
}

let keys = [newKey()];

const b64url = (buf) => Buffer.from(buf).toString('base64url');

function signJwt(header, payload, jwk) {
  const key = crypto.createPrivateKey({ key: jwk, format: 'jwk' });
  const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(payload))}`;
  return `${input}.${b64url(crypto.sign('sha256', Buffer.from(input), key))}`;
}

function mutateIdToken(idToken, m) {
  const [h, p, s] = idToken.split('.');
  const header = { ...JSON.parse(Buffer.from(h, 'base64url')), ...(m.header || {}) };
  const payload = { ...JSON.parse(Buffer.from(p, 'base64url')), ...(m.claims || {}) };
  for (const [k, v] of Object.entries(payload)) if (v === null) delete payload[k];
  const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(payload))}`;
  if (header.alg === 'none') return `${input}.`;
  if (header.alg === 'HS256') {
    // Algorithm confusion: an HMAC "signature" keyed with a value the attacker may know.
    return `${input}.${b64url(crypto.createHmac('sha256', m.hmacKey || '').update(input).digest())}`;
  }
  if (m.resign === false) {
    return `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(payload))}.${s}`;
  }
  const jwk = m.foreignKey ? newKey() : keys[0];
  return signJwt({ ...header, kid: m.foreignKey ? header.kid : jwk.kid }, payload, jwk);
}

function makeProvider(issuer) {
  const provider = new Provider(issuer, {
    adapter: sharedAdapter,
    clients: config.clients,
    jwks: { keys },
    cookies: { keys: [cookieKey] },
    async findAccount(ctx, id) {
      const claims = accounts.get(id);
      if (!claims || claims.disabled) return undefined;
      return { accountId: id, async claims() { return { sub: id, ...accounts.get(id) }; } };
    },
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['name', 'preferred_username', 'nickname'],
      groups: ['groups'],
    },
    scopes: ['openid', 'offline_access', 'email', 'profile', 'groups'],
    features: { devInteractions: { enabled: true }, userinfo: { enabled: true } },
    rotateRefreshToken: true,
    // Put the scopes' claims in the ID token too (not only at userinfo), like most providers.
    conformIdTokenClaims: false,
    async issueRefreshToken(ctx, client, code) {
      return client.grantTypeAllowed('refresh_token') && code.scopes.has('offline_access');
    },
  });
  provider.use(async (ctx, next) => {
    const isToken = ctx.path === '/token' && ctx.method === 'POST';
    if (isToken && refreshDelayMs) {
      // Holds every token call while set, so two concurrent refreshes overlap for certain.
      await new Promise((r) => { setTimeout(r, refreshDelayMs); });
    }
    await next();
    if (!isToken) return;
    const grant = ctx.oidc && ctx.oidc.params ? ctx.oidc.params.grant_type : undefined;
    if (grant in stats) {
      if (ctx.status === 200) stats[grant] += 1;
      else if (grant === 'refresh_token') stats.refresh_token_refused += 1;
    }
    if (mutation && ctx.status === 200 && ctx.body && ctx.body.id_token) {
      ctx.body = { ...ctx.body, id_token: mutateIdToken(ctx.body.id_token, mutation) };
      mutation = null;
    }
  });
  provider.on('grant.error', (ctx, err) => {
    process.stderr.write(`grant.error: ${err.error}: ${err.error_detail || err.message}\n`);
  });
  provider.on('server_error', (ctx, err) => { process.stderr.write(`server_error: ${err.stack}\n`); });
  return provider;
}

let provider = null;
let handler = null;

function readJson(req) {
  return new Promise((resolve, reject) => {
    let data = '';
    req.on('data', (c) => { data += c; });
    req.on('end', () => { try { resolve(data ? JSON.parse(data) : {}); } catch (e) { reject(e); } });
  });
}

async function admin(req, res, issuer) {
  const send = (code, body) => {
    res.writeHead(code, { 'content-type': 'application/json' });
    res.end(JSON.stringify(body));
  };
  if (req.headers['x-admin-token'] !== config.adminToken) return send(403, { error: 'forbidden' });
  const url = new URL(req.url, 'http://x');
  const parts = url.pathname.split('/').filter(Boolean);
  const body = await readJson(req);
  if (parts[1] === 'accounts' && parts[2]) {
    const id = decodeURIComponent(parts[2]);
    if (req.method === 'PUT') accounts.set(id, body);
    else if (req.method === 'DELETE') accounts.delete(id);
    return send(200, { ok: true });
  }
  if (parts[1] === 'rotate-keys' && req.method === 'POST') {
    keys = body.keepOld ? [newKey(), ...keys] : [newKey()];
    provider = makeProvider(issuer);
    handler = provider.callback();
    return send(200, { kids: keys.map((k) => k.kid) });
  }
  if (parts[1] === 'mutate-next-token' && req.method === 'POST') {
    mutation = body;
    return send(200, { ok: true });
  }
  if (parts[1] === 'refresh-delay' && req.method === 'POST') {
    refreshDelayMs = Number(body.ms) || 0;
    return send(200, { ok: true });
  }
  if (parts[1] === 'stats' && req.method === 'GET') return send(200, stats);
  return send(404, { error: 'not found' });
}

const tls = config.tls
  ? { cert: fs.readFileSync(config.tls.cert), key: fs.readFileSync(config.tls.key) }
  : null;
let issuerUrl = null;
const listener = (req, res) => {
  if (req.url.startsWith('/admin/')) {
    admin(req, res, issuerUrl).catch((e) => { res.writeHead(500); res.end(String(e)); });
    return;
  }
  handler(req, res);
};
const server = tls ? https.createServer(tls, listener) : http.createServer(listener);
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  issuerUrl = `${tls ? 'https' : 'http'}://127.0.0.1:${port}`;
  provider = makeProvider(issuerUrl);
  handler = provider.callback();
  process.stdout.write(`READY ${port}\n`);
});
process.on('SIGTERM', () => { server.close(); process.exit(0); });
