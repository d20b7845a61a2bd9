"""A Faust-style app with Faust's web views."""

import streamtrio as faust
from streamtrio import web as faust_web

app = faust.App("faust-web", broker="memory://", store="memory://")
counts = app.Table("counts", default=int, partitions=1)


@app.page("/count/{name}/")
async def get_count(web: faust_web.Web, request: faust_web.Request, name: str) -> faust_web.Response:
    scale = int(request.query.get("scale", "1"))
    return web.json({"name": name, "count": counts[name] * scale})


@app.page("/counter/")
class Counter(faust_web.View):
    async def get(self, request: faust_web.Request) -> faust_web.Response:
        who = request.query.get("who", "")
        return self.json({"count": counts[who], "who": who})

    async def post(self, request: faust_web.Request) -> faust_web.Response:
        body = await request.json()
        counts[body["name"]] += 1
        return self.json({"ok": True}, status=201)
