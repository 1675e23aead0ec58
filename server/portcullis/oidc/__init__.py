"""The protocol core, framework-free: the authorization flow (the login state machine), the
token endpoint's grants, refresh-token rotation, token minting and reading, claims, scopes,
PKCE, OAuth/OIDC errors and discovery; ``provider.Provider`` ties them together.

Must not: import an HTTP framework, the adapters (web, kube, admin) or the assembly. It decides;
storage persists, connectors talk upstream, the adapters translate HTTP.
"""
