"""HTTP file upload (XEP-0363): slots over XMPP on the upload domain, files over HTTP."""
