"""Serve the flow as the deployment `instructflow/local` (needs a Prefect server; see README).

    PREFECT_API_URL=http://127.0.0.1:4200/api python -m flows.serve
    prefect deployment run 'instructflow/local' -p overrides='["experiment=smoke"]' --watch
"""

from flows.pipeline import instructflow

if __name__ == "__main__":
    instructflow.serve(name="local", parameters={"overrides": []})
