-- POST /api/v1/auth/login with the demo admin. scrypt (n=2^14) dominates by design.
wrk.method = "POST"
wrk.path = "/api/v1/auth/login"
wrk.body = '{"username":"admin","password":"admin"}'
wrk.headers["Content-Type"] = "application/json"
