"""The router (RFC 6121 §8.5): in shared/ because two processes run it, the router service
(`python -m services.router`) and a connection manager that embeds one
(`STANZAD_EMBEDDED_ROUTER`)."""
