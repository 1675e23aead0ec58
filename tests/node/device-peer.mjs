// node-oidc-provider as an independent device-flow issuer (RFC 8628) for kubectl-portcullis.
//
// The provider is the real library with its development login/consent pages. Two things are
// layered on with Koa middleware, both allowed by RFC 8628 and both logged:
//  * the device authorization response advertises `interval` (oidc-provider omits it, which
//    would make every test wait the default 5 seconds per poll);
//  * for the client `slow-client` the server enforces a 3-second polling rate while
//    advertising 1 second, answering `slow_down` to a poll that comes sooner (RFC 8628 §3.5) —
//    oidc-provider itself never sends slow_down.
// Every device-code poll is printed to stdout as one JSON line for the test to inspect.
//
// Usage: node device_peer.mjs PORT
import Provider from 'oidc-provider';

const port = Number(process.argv[2]);
const issuer = `http://127.0.0.1:${port}`;
const ADVERTISED_INTERVAL = 1;
const SLOW_CLIENT_RATE_MS = 3000;

const deviceClient = (clientId) => ({
  client_id: clientId,
  token_endpoint_auth_method: 'none',
  application_type: 'native',
  grant_types: ['urn:ietf:params:oauth:grant-type:device_code', 'refresh_token'],
  response_types: [],
  redirect_uris: [],
});

const provider = new Provider(issuer, {
  clients: [deviceClient('kubectl'), deviceClient('slow-client'), deviceClient('short-lived')],
  features: {
    deviceFlow: { enabled: true },
    devInteractions: { enabled: true },
    revocation: { enabled: true },
  },
  scopes: ['openid', 'offline_access', 'email', 'profile', 'groups'],
  claims: { email: ['email'], profile: ['name'], groups: ['groups'] },
  conformIdTokenClaims: false,
  ttl: {
    DeviceCode: (ctx, token, client) => (client.clientId === 'short-lived' ? 2 : 600),
    IdToken: 3600,
    AccessToken: 3600,
  },
  async findAccount(ctx, sub) {
    return {
      accountId: sub,
      async claims() {
        return { sub, email: `${sub}@device.example`, name: sub, groups: ['device-users'] };
      },
    };
  },
});

const lastPoll = new Map();
const log = (event) => process.stdout.write(`${JSON.stringify({ ...event, t: Date.now() })}\n`);

provider.use(async (ctx, next) => {
  await next();
  if (ctx.path === '/device/auth' && ctx.status === 200 && ctx.body?.device_code) {
    ctx.body.interval = ADVERTISED_INTERVAL;
    lastPoll.set(ctx.body.device_code, Date.now());
    log({ event: 'device_authorization', client: ctx.oidc?.client?.clientId });
  }
  if (ctx.path === '/token' && ctx.oidc?.params?.grant_type === 'urn:ietf:params:oauth:grant-type:device_code') {
    const code = ctx.oidc.params.device_code;
    const client = ctx.oidc.client?.clientId;
    const now = Date.now();
    const previous = lastPoll.get(code);
    lastPoll.set(code, now);
    let answer = ctx.status === 200 ? 'tokens' : ctx.body?.error;
    if (client === 'slow-client' && answer === 'authorization_pending' && previous !== undefined
        && now - previous < SLOW_CLIENT_RATE_MS) {
      ctx.body = { error: 'slow_down', error_description: 'poll at most every 3 seconds' };
      answer = 'slow_down';
    }
    log({ event: 'poll', client, answer, since_previous_ms: previous === undefined ? null : now - previous });
  }
  if (ctx.path === '/token' && ctx.oidc?.params?.grant_type === 'refresh_token') {
    log({ event: 'refresh', client: ctx.oidc.client?.clientId, status: ctx.status });
  }
});

provider.listen(port, '127.0.0.1', () => log({ event: 'ready', issuer }));
