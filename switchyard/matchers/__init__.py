"""The built-in matchers: tls, http, h2c, ssh, any and regex."""
