-- Whole-sequence predict: every request POSTs the same JSON body, read from $BODY_FILE
-- ({"inputs": [[[x], ...]]}, the very bytes the TorchServe peer's bench.sh sends).
dofile(os.getenv("LUA_DIR") .. "/common.lua")

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = read_file(os.getenv("BODY_FILE"))
