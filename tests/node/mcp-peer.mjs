// MCP interop peer (issue 16): an MCP server that validates Portcullis access tokens the way
// the Flux MCP Server does (JWKS signature, iss, aud = its own URL, claims -> impersonated
// user), and the TypeScript MCP SDK's OAuth client talking to it. Both from
// @modelcontextprotocol/sdk, independent of Portcullis.
//
// Driven by tests/integration/test_mcp_sdk_interop.py over stdio: this process prints one JSON
// event per line on stdout; the test answers on stdin (the authorization code it obtained by
// logging in through Portcullis' HTML pages, or "revoked" once it has revoked the session).
//
// Usage: node mcp-peer.mjs <issuer> <mcp-port> <redirect-port>
import http from 'node:http';
import readline from 'node:readline';
import { createRemoteJWKSet, jwtVerify } from 'jose';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { UnauthorizedError } from '@modelcontextprotocol/sdk/client/auth.js';

const [issuer, mcpPort, redirectPort] = process.argv.slice(2);
const origin = `http://127.0.0.1:${mcpPort}`;
const resource = `${origin}/mcp`;
const metadataUrl = `${origin}/.well-known/oauth-protected-resource/mcp`;
const scopes = ['openid', 'email', 'groups', 'offline_access'];

const emit = (event) => process.stdout.write(JSON.stringify(event) + '\n');
const lines = readline.createInterface({ input: process.stdin });
const waiting = [];
const queued = [];
lines.on('line', (line) => (waiting.length ? waiting.shift()(line) : queued.push(line)));
const nextLine = () =>
  new Promise((resolve) => (queued.length ? resolve(queued.shift()) : waiting.push(resolve)));

// ---- the resource server ---------------------------------------------------------------------
const discovery = await (await fetch(`${issuer}/.well-known/openid-configuration`)).json();
const jwks = createRemoteJWKSet(new URL(discovery.jwks_uri));
const refusals = [];

function refuse(res, reason) {
  refusals.push(reason);
  res.writeHead(401, {
    'WWW-Authenticate': `Bearer error="invalid_token", resource_metadata="${metadataUrl}"`,
    'Content-Type': 'application/json',
  });
  res.end(JSON.stringify({ error: 'invalid_token', error_description: reason }));
}

async function readBody(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  const text = Buffer.concat(chunks).toString('utf8');
  return text ? JSON.parse(text) : undefined;
}

const server = http.createServer(async (req, res) => {
  try {
    const path = new URL(req.url, origin).pathname;
    if (path === '/.well-known/oauth-protected-resource/mcp' ||
        path === '/.well-known/oauth-protected-resource') {
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify({
        resource,
        authorization_servers: [issuer],
        scopes_supported: scopes,
        bearer_methods_supported: ['header'],
      }));
      return;
    }
    if (path !== '/mcp') {
      res.writeHead(404).end();
      return;
    }
    const header = req.headers.authorization || '';
    if (!header.startsWith('Bearer ')) return refuse(res, 'no bearer token');
    let claims;
    try {
      ({ payload: claims } = await jwtVerify(header.slice(7), jwks, { issuer, audience: resource }));
    } catch (error) {
      return refuse(res, `${error.code || error.name}: ${error.message}`);
    }
    // As the Flux MCP Server: the token's claims become the impersonated Kubernetes user.
    const mcp = new McpServer({ name: 'flux-mcp-standin', version: '1.0.0' });
    mcp.registerTool('whoami', { description: 'The impersonated user' }, async () => ({
      content: [{
        type: 'text',
        text: JSON.stringify({ user: claims.email, groups: claims.groups || [], aud: claims.aud }),
      }],
    }));
    const transport = new StreamableHTTPServerTransport({
      sessionIdGenerator: undefined,
      enableJsonResponse: true,
    });
    res.on('close', () => { transport.close(); mcp.close(); });
    await mcp.connect(transport);
    await transport.handleRequest(req, res, req.method === 'POST' ? await readBody(req) : undefined);
  } catch (error) {
    if (!res.headersSent) res.writeHead(500);
    res.end(String(error));
  }
});
await new Promise((resolve) => server.listen(Number(mcpPort), '127.0.0.1', resolve));

// ---- the MCP client with the SDK's OAuth ------------------------------------------------------
const store = { client: undefined, tokens: undefined, verifier: undefined, redirects: 0 };
const provider = {
  get redirectUrl() { return `http://127.0.0.1:${redirectPort}/callback`; },
  get clientMetadata() {
    return {
      client_name: 'Portcullis MCP interop test',
      redirect_uris: [this.redirectUrl],
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'none',
      scope: scopes.join(' '),
    };
  },
  clientInformation: () => store.client,
  saveClientInformation: (info) => { store.client = info; },
  tokens: () => store.tokens,
  saveTokens: (tokens) => { store.tokens = tokens; },
  redirectToAuthorization: (url) => {
    store.redirects += 1;
    emit({ event: 'authorize', url: url.toString() });
  },
  saveCodeVerifier: (verifier) => { store.verifier = verifier; },
  codeVerifier: () => store.verifier,
  // What a real MCP client does when the server refuses its credentials (the SDK then starts
  // over: a refused refresh leads to a new interactive authorization).
  invalidateCredentials: (scope) => {
    if (scope === 'all' || scope === 'tokens') store.tokens = undefined;
    if (scope === 'all' || scope === 'client') store.client = undefined;
    if (scope === 'all' || scope === 'verifier') store.verifier = undefined;
  },
};

async function connect() {
  const client = new Client({ name: 'portcullis-interop', version: '1.0.0' });
  await client.connect(new StreamableHTTPClientTransport(new URL(resource), { authProvider: provider }));
  return client;
}

async function whoami() {
  const client = await connect();
  try {
    const result = await client.callTool({ name: 'whoami', arguments: {} });
    return JSON.parse(result.content[0].text);
  } finally {
    await client.close();
  }
}

try {
  // 1. Discover, register, log in (the test drives the HTML pages), call a tool.
  const transport = new StreamableHTTPClientTransport(new URL(resource), { authProvider: provider });
  const first = new Client({ name: 'portcullis-interop', version: '1.0.0' });
  try {
    await first.connect(transport);
    throw new Error('connected without logging in');
  } catch (error) {
    if (!(error instanceof UnauthorizedError)) throw error;
  }
  await transport.finishAuth(await nextLine());
  emit({ event: 'registered', client_id: store.client.client_id });
  emit({ event: 'tool', result: await whoami(), tokens: store.tokens });

  // 2. The access token is refused (as when it expires): the SDK refreshes and retries.
  const before = store.tokens;
  store.tokens = { ...before, access_token: 'not-a-valid-token' };
  const after = await whoami();
  emit({
    event: 'refreshed',
    result: after,
    rotated: store.tokens.refresh_token !== before.refresh_token,
    tokens: store.tokens,
  });

  // 3. The session is revoked at Portcullis: the refresh is refused and the SDK falls back
  //    to a new interactive authorization.
  await nextLine();
  store.tokens = { ...store.tokens, access_token: 'not-a-valid-token' };
  const redirectsBefore = store.redirects;
  try {
    await whoami();
    emit({ event: 'not-refused' });
  } catch (error) {
    emit({
      event: 'refused',
      unauthorized: error instanceof UnauthorizedError,
      reauthorize: store.redirects > redirectsBefore,
      message: String(error.message || error),
    });
  }
  emit({ event: 'refusals', refusals });
} catch (error) {
  emit({ event: 'error', message: String(error && error.stack || error) });
} finally {
  server.close();
  lines.close();
}
