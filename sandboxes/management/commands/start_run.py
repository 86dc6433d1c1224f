from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from config.exceptions import AirlockError
from sandboxes import selectors, services
from sandboxes.management.commands._common import actor_for, describe
from sandboxes.models import ACTIVE_STATUSES, CommandKind, RunStatus, SandboxRun
from workspaces.management.operator import WORKSPACE_HELP, workspace_arg


class Command(BaseCommand):
    help = (
        "Start a sandbox run (a worker boots it); with --wait, wait for it to end (a job) or "
        "to be running (interactive) and print its status and the job's output."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("workspace", help=WORKSPACE_HELP)
        parser.add_argument("--prompt", required=True, help="the task, shown to reviewers")
        parser.add_argument("--command", default="", help="a job to run; the run ends with it")
        parser.add_argument("--thread", default="cli", help="agent thread id")
        parser.add_argument("--template", default="")
        parser.add_argument("--max-duration-ms", type=int)
        parser.add_argument("--idle-timeout-ms", type=int)
        parser.add_argument("--as", dest="username", help="who starts it (default: the owner)")
        parser.add_argument("--wait", action="store_true", help="wait for the run to end")
        parser.add_argument("--wait-timeout", type=float, default=600.0, help="seconds")

    def handle(self, *args: Any, **o: Any) -> None:
        workspace = workspace_arg(o["workspace"])
        actor = actor_for(o["username"], default_user=workspace.owner)
        try:
            run, _ = services.run_create(
                workspace=workspace,
                actor=actor,
                thread_id=o["thread"],
                prompt=o["prompt"],
                command=o["command"],
                template=o["template"],
                max_duration_ms=o["max_duration_ms"],
                idle_timeout_ms=o["idle_timeout_ms"],
            )
        except AirlockError as exc:
            raise CommandError(exc.detail) from exc
        self.stdout.write(f"started {run.pk}")
        if not o["wait"]:
            return
        run = self._wait(run, o["wait_timeout"], until_ended=bool(o["command"]))
        self.stdout.write(describe(run))
        self._job_output(run)
        if run.status in (RunStatus.FAILED, RunStatus.CANCELED):
            raise CommandError(f"run {run.status}")

    def _job_output(self, run: SandboxRun) -> None:
        """The job's stdout to stdout and its stderr to stderr, as the command record keeps
        them (each stream's last 64 KiB, the run's log artifact holds the rest)."""
        job = selectors.command_list(run=run).filter(kind=CommandKind.JOB).last()
        if job is None:
            return
        for stream, text in ((self.stdout, job.stdout_tail), (self.stderr, job.stderr_tail)):
            if text:
                stream.write(text, ending="" if text.endswith("\n") else "\n")
        if job.truncated:
            self.stderr.write("(output truncated: the run's log artifact holds what the job kept)")

    def _wait(self, run: SandboxRun, timeout: float, *, until_ended: bool) -> SandboxRun:
        """Until the run ends (a job) or is running (interactive): a worker must be up."""
        deadline = time.monotonic() + timeout

        def done(r: SandboxRun) -> bool:
            return r.status not in ACTIVE_STATUSES or (
                not until_ended and r.status == RunStatus.RUNNING
            )

        while not done(run):
            if time.monotonic() > deadline:
                raise CommandError(f"run {run.pk} is still {run.status} (is a worker running?)")
            time.sleep(0.2)
            run.refresh_from_db()
        return run
