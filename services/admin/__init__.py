"""The admin API: accounts, sessions and cluster status over HTTP, token-protected."""
