async def run(con, argv): return 0
