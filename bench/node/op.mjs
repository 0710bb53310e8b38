// The peer of bench/oidc_tokens.py: node oidc-provider (v9) configured like idhub's token endpoint —
// client_secret_basic, client credentials, refresh tokens rotated at every use, RS256 JWT access tokens
// (resource indicators with accessTokenFormat 'jwt'), an RS256 ID token on refresh.
//   node op.mjs PORT REFRESH_TOKENS     → prints one JSON line {"ready": true, "refresh_tokens": [...]}
// The refresh tokens are minted in-process (a Grant + RefreshToken for one account, like an authorization code
// grant with offline_access would leave), one per benchmark client thread.
import { generateKeyPairSync } from 'node:crypto'
import { createServer } from 'node:http'
import Provider from 'oidc-provider'

const [, , portArg, countArg] = process.argv
const port = Number(portArg)
const count = Number(countArg || 32)
const issuer = `http://127.0.0.1:${port}`
const RESOURCE = 'https://api.bench.test'
export const CLIENT_ID = 'bench'
const SECRET = process.env.BENCH_CLIENT_SECRET
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 })
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: 'bench-rs256', alg: 'RS256', use: 'sig' }

// oidc-provider's default MemoryAdapter is an LRU of 1000 entries: under load it evicts the Grants that refresh
// tokens point to. This one keeps everything in a Map (the run is short), like the default otherwise.
const store = new Map()
const grants = new Map()
class MapAdapter {
  constructor(name) { this.name = name }
  key(id) { return `${this.name}:${id}` }
  async upsert(id, payload) {
    const key = this.key(id)
    store.set(key, payload)
    if (payload.grantId) {
      const keys = grants.get(payload.grantId) ?? []
      keys.push(key)
      grants.set(payload.grantId, keys)
    }
  }
  async find(id) { return store.get(this.key(id)) }
  async findByUid(uid) { return [...store.values()].find((p) => p.uid === uid) }
  async findByUserCode(code) { return [...store.values()].find((p) => p.userCode === code) }
  async consume(id) {
    const p = store.get(this.key(id))
    if (p) p.consumed = Math.floor(Date.now() / 1000)
  }
  async destroy(id) { store.delete(this.key(id)) }
  async revokeByGrantId(grantId) {
    for (const key of grants.get(grantId) ?? []) store.delete(key)
    grants.delete(grantId)
  }
}

const provider = new Provider(issuer, {
  adapter: MapAdapter,
  clients: [{
    client_id: CLIENT_ID,
    client_secret: SECRET,
    grant_types: ['client_credentials', 'refresh_token', 'authorization_code'],
    response_types: ['code'],
    redirect_uris: ['https://app.bench.test/cb'],
    token_endpoint_auth_method: 'client_secret_basic',
    id_token_signed_response_alg: 'RS256',
  }],
  jwks: { keys: [jwk] },
  cookies: { keys: ['bench-cookie-key-0123456789abcdef'] },
  scopes: ['openid', 'offline_access', 'api'],
  claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'] },
  findAccount: async (ctx, id) => ({
    accountId: id,
    claims: async () => ({ sub: id, email: `${id}@bench.test`, email_verified: true, name: id }),
  }),
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => RESOURCE,
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({
        scope: 'api',
        audience: RESOURCE,
        accessTokenTTL: 300,
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg: 'RS256' } },
      }),
    },
  },
  rotateRefreshToken: true,
  ttl: { AccessToken: 300, ClientCredentials: 300, IdToken: 3600, RefreshToken: 30 * 24 * 3600, Grant: 30 * 24 * 3600 },
})
provider.proxy = false

async function mintRefreshTokens(n) {
  const client = await provider.Client.find(CLIENT_ID)
  const out = []
  const now = Math.floor(Date.now() / 1000)
  for (let i = 0; i < n; i += 1) {
    const accountId = `user${i}`
    const grant = new provider.Grant({ accountId, clientId: CLIENT_ID })
    grant.addOIDCScope('openid email profile offline_access')
    grant.addResourceScope(RESOURCE, 'api')
    const grantId = await grant.save()
    const rt = new provider.RefreshToken({
      accountId, client, grantId, gty: 'authorization_code', scope: 'openid email profile offline_access api',
      resource: RESOURCE, authTime: now, iiat: now, amr: ['pwd'], acr: 'urn:bench:pwd',
    })
    out.push(await rt.save())
  }
  return out
}

const server = createServer(provider.callback())
server.keepAliveTimeout = 65000
server.listen(port, '127.0.0.1', async () => {
  const refresh_tokens = await mintRefreshTokens(count)
  process.stdout.write(JSON.stringify({ ready: true, issuer, refresh_tokens }) + '\n')
})
