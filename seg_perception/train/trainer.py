"""The training loop: stages, SGD, schedules, AMP, checkpoints, validation, logs, DDP.

``Trainer(recipe).run()`` trains ``recipe.model`` through the recipe's stages (alternating
training is just several stages with their own dataset, OHEM and SCL switches). Everything random
is a pure function of ``(run.seed, iteration, rank)`` -- batches, augmentation and the torch RNG
that drives dropout and Mask R-CNN's sampling are re-seeded every iteration -- so a run resumed
from a checkpoint follows the same loss curve as an uninterrupted one on the CPU.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from seg_perception.data.datasets import AugmentedDataset, build_dataset, collate
from seg_perception.errors import SegError
from seg_perception.labels import load_label_table
from seg_perception.machine import choose_amp, detect
from seg_perception.train import distributed as D
from seg_perception.train.checkpoint import (
    CheckpointError,
    find_latest_checkpoint,
    load_checkpoint,
    network_state_dict,
    read_network_weights,
    save_checkpoint,
)
from seg_perception.train.modules import PanopticTrainModule, SemanticTrainModule
from seg_perception.train.recipe import TrainRecipe, recipe_to_dict
from seg_perception.train.runlog import RunLog, parameter_digest, plain
from seg_perception.train.schedules import StagePlan, learning_rate, plan_stages, warmup_factor

__all__ = [
    "DivergenceError",
    "TrainResult",
    "TrainState",
    "Trainer",
    "parameter_digest",
    "torch_threads",
]

log = logging.getLogger("seg_perception.train")


class DivergenceError(SegError, RuntimeError):
    """The loss became NaN / inf; the message names the iteration and the last good checkpoint."""


@dataclass
class TrainResult:
    iterations: int = 0
    losses: list[tuple[int, float]] = field(default_factory=list)
    val: dict[str, Any] = field(default_factory=dict)
    last_checkpoint: Path | None = None
    seconds_per_iteration: float = math.nan
    #: wall time of every iteration of this run, data loading included (the first: warm-up)
    iteration_seconds: list[float] = field(default_factory=list)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[int]:
    """Run with ``n`` torch CPU threads (0: unchanged); yields the count in effect."""
    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def _iteration_seed(seed: int, iteration: int, rank: int) -> int:
    return (seed * 1_000_003 + iteration * 7_919 + rank * 104_729 + 12_345) % (2**63 - 1)


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    def move(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return v.to(device, non_blocking=True)
        if isinstance(v, list):
            return [move(x) for x in v]
        if isinstance(v, dict):
            return {k: move(x) for k, x in v.items()}
        return v

    return {k: move(v) for k, v in batch.items()}


class Trainer:
    """Train a recipe. ``resume``: a checkpoint file or run directory to continue from."""

    def __init__(
        self,
        recipe: TrainRecipe,
        *,
        resume: str | Path | None = None,
        dist_info: D.DistInfo | None = None,
        cpu_features: Collection[str] | None = None,
    ) -> None:
        self.recipe = recipe
        self.resume = resume
        self.dist = dist_info or D.DistInfo()
        self.out_dir = Path(recipe.run.out_dir)
        self.labels = load_label_table(recipe.data.labels)
        self.is_asp = recipe.model.name == "panoptic_asp"
        features = detect().features if cpu_features is None else cpu_features
        #: autocast dtype and why (``optim.amp`` on this machine; ``cpu_features``: tests)
        self.amp = choose_amp(recipe.optim.amp, self.dist.device.type, features)
        #: the model and its image batches in NHWC (``run.channels_last``)
        self.channels_last = recipe.run.channels_last

    # ------------------------------------------------------------------------------ building
    def _build_module(self) -> nn.Module:
        from seg_perception.networks import build_model
        from seg_perception.networks.export import load_weights
        from seg_perception.networks.widen import widen_into

        r = self.recipe
        torch.manual_seed(r.run.seed)  # identical initial weights on every rank
        net = build_model(r.model.name, **r.model.switches)
        if r.model.init_weights and r.model.init_widen:
            narrow = read_network_weights(r.model.init_weights)
            widen_into(net, narrow, source=r.model.init_weights)
            log.info("model.init_widen: %s embedded in the wider network", r.model.init_weights)
        elif r.model.init_weights:
            try:  # a trainer checkpoint (its net.* part) ...
                state = network_state_dict(load_checkpoint(r.model.init_weights)["model"])
                net.load_state_dict(state)
            except CheckpointError:  # ... or a plain state dict (.safetensors / .pt)
                load_weights(net, r.model.init_weights, ignore_unexpected=True)
        prefix = r.optim.freeze_bn_prefix if r.optim.freeze_bn else None
        if self.is_asp:
            return PanopticTrainModule(net, weights=r.loss.asp_weights, freeze_bn_prefix=prefix)
        return SemanticTrainModule(
            net,
            ohem=r.loss.ohem,
            ohem_threshold=r.loss.ohem_threshold,
            ohem_min_kept=r.loss.ohem_min_kept,
            aux_weight=r.loss.aux_weight,
            use_scl=any(s.scl for s in r.stages),
            scl_weight=r.loss.scl_weight,
            scl_hidden=r.loss.scl_hidden,
            scl_features=r.model.scl_features,
            freeze_bn_prefix=prefix,
        )

    def _build_data(self) -> tuple[dict[str, AugmentedDataset], list[StagePlan]]:
        r = self.recipe
        used = dict.fromkeys(s.dataset for s in r.stages)
        datasets = {
            name: AugmentedDataset(
                build_dataset(r.data.train[name], labels=self.labels, strict=r.run.strict),
                r.augment,
                labels=self.labels,
                with_instances=self.is_asp,
                strict=r.run.strict,
            )
            for name in used
        }
        ipe = {
            n: D.iterations_per_epoch(len(ds), r.data.batch_size, self.dist.world_size)
            for n, ds in datasets.items()
        }
        stages = [
            (
                s.name,
                s.dataset,
                s.length,
                s.lr or r.optim.lr,
                r.loss.ohem if s.ohem is None else s.ohem,
                s.scl,
            )
            for s in r.stages
        ]
        return datasets, plan_stages(stages, unit=r.schedule.unit, iterations_per_epoch=ipe)

    def _lr(self, stage: StagePlan, t: int, iteration: int) -> float:
        s = self.recipe.schedule
        step = round(s.step_size * (stage.iterations_per_epoch if s.unit == "epochs" else 1))
        lr = learning_rate(
            t,
            stage.length,
            base_lr=stage.base_lr,
            policy=s.policy,
            power=s.power,
            step=max(1, step),
            gamma=s.gamma,
            hold=s.hold,
            final_lr=s.final_lr,
        )
        return lr * warmup_factor(iteration, s.warmup_iterations)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp.value is None:
            return contextlib.nullcontext()
        dtype = torch.float16 if self.amp.value == "fp16" else torch.bfloat16
        return torch.autocast(self.dist.device.type, dtype=dtype)

    # ------------------------------------------------------------------------------ reporting
    def _checkpoint(self, run: TrainState, iteration: int, stage: int) -> None:
        digests = D.gather_objects(parameter_digest(run.module))
        if len(set(digests)) > 1:
            log.warning("DDP replicas differ at iteration %d: %s", iteration, digests)
        if self.dist.is_main:
            import yaml

            payload = {
                "model": run.module.state_dict(),
                "optimizer": run.optimizer.state_dict(),
                "scaler": run.scaler.state_dict() if run.scaler is not None else {},
                "model_name": self.recipe.model.name,
                "switches": dict(self.recipe.model.switches),
                "recipe": yaml.safe_dump(recipe_to_dict(self.recipe), sort_keys=False),
                "replica_digests": digests,
                "stage": stage,
                "val": plain(run.result.val),
            }
            run.result.last_checkpoint = save_checkpoint(
                self.out_dir, iteration, payload, keep=self.recipe.run.keep_checkpoints
            )
        D.barrier()

    def _validate(self, run: TrainState, iteration: int) -> None:
        if run.val_set is None:
            return
        if self.dist.is_main:
            from seg_perception.train.validate import validate_panoptic, validate_semantic

            r = self.recipe
            kw: dict[str, Any] = dict(
                device=self.dist.device,
                labels=self.labels,
                max_frames=r.data.val_frames,
                num_samples=r.run.sample_images if run.log.wants_images else 0,
                progress=r.run.progress,
            )
            if self.is_asp:
                metrics, panels = validate_panoptic(run.module, run.val_set, **kw)
            else:
                kw["net_size"] = r.data.val_size
                kw["tta"] = r.data.val_tta
                metrics, panels = validate_semantic(run.module, run.val_set, **kw)
            flat = {k: v for k, v in metrics.items() if isinstance(v, float)}
            run.log.scalars("val", flat, iteration)
            run.log.images("val/sample", panels, iteration)
            log.info("validation @%d: %s", iteration, {k: round(v, 4) for k, v in flat.items()})
            run.result.val = metrics
        D.barrier()

    # ------------------------------------------------------------------------------ the loop
    def run(self) -> TrainResult:
        """Train every stage (from the checkpoint's iteration with ``resume``)."""
        with torch_threads(self.recipe.run.threads):
            run = self.setup()
            try:
                self._loop(run)
            finally:
                run.log.close()
            run.result.seconds_per_iteration = run.log.seconds_per_iteration()
            run.result.iteration_seconds = list(run.log.times)
            return run.result

    def setup(self) -> TrainState:
        """Data, model (from ``resume`` if given), optimiser and log of a run, before its loop."""
        r = self.recipe
        dev = self.dist.device
        self.out_dir.mkdir(parents=True, exist_ok=True)
        datasets, plans = self._build_data()
        module = self._build_module().to(dev)
        if self.channels_last:
            module = module.to(memory_format=torch.channels_last)
        params = [p for p in module.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(
            params,
            lr=r.optim.lr,
            momentum=r.optim.momentum,
            weight_decay=r.optim.weight_decay,
            nesterov=r.optim.nesterov,
        )
        if self.dist.is_main:
            log.info("autocast: %s (%s)", self.amp.value or "off, fp32", self.amp.reason)
            if self.amp.warning:
                log.warning(self.amp.warning)
        scaler = torch.amp.GradScaler("cuda") if self.amp.value == "fp16" else None
        result = TrainResult()
        if self.resume is not None:
            ckpt_path = find_latest_checkpoint(self.resume)
            if ckpt_path is None:
                raise FileNotFoundError(f"--resume: no checkpoint in {self.resume}")
            ckpt = load_checkpoint(ckpt_path, map_location=dev)
            if ckpt.get("model_name") != r.model.name:
                raise ValueError(
                    f"--resume: {ckpt_path} is a {ckpt.get('model_name')!r} checkpoint, the "
                    f"recipe trains {r.model.name!r}"
                )
            module.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            if scaler is not None and ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
            result.iterations = int(ckpt["iteration"])
            result.last_checkpoint = ckpt_path
            log.info("resumed from %s at iteration %d", ckpt_path, result.iterations)
        elif self.is_asp and not (r.model.switches.get("backbone_weights") or r.model.init_weights):
            self._calibrate_asp(module, datasets[plans[0].dataset], plans[0])
        train_module: nn.Module = module
        if self.dist.distributed:
            train_module = nn.parallel.DistributedDataParallel(
                module,
                device_ids=[dev.index] if dev.type == "cuda" else None,
                # The SCL subnet sits idle in stages without SCL; Mask R-CNN's heads may get no
                # RoI in a batch. Plain semantic nets use every parameter in every step.
                find_unused_parameters=self.is_asp or any(s.scl for s in r.stages),
            )
        val_set = None
        if r.data.val is not None:
            val_set = build_dataset(r.data.val, labels=self.labels, strict=r.run.strict)
        runlog = RunLog(
            self.out_dir,
            enabled=self.dist.is_main,
            tensorboard=r.run.tensorboard,
            progress=r.run.progress,
            total=plans[-1].end,
            initial=result.iterations,
            desc=f"train {r.model.name}",
        )
        return TrainState(
            module,
            train_module,
            optimizer,
            scaler,
            params,
            datasets,
            plans,
            val_set,
            runlog,
            result,
        )

    def loader(self, run: TrainState, plan: StagePlan) -> torch.utils.data.DataLoader:
        """The batches of ``plan`` from the run's current iteration on (:func:`D.batch_keys`)."""
        ds = run.datasets[plan.dataset]
        sampler = D.BatchKeySampler(
            start=run.result.iterations - plan.start,
            stop=plan.length,
            dataset_len=len(ds),
            batch_size=self.recipe.data.batch_size,
            seed=self.recipe.run.seed,
            stage=plan.index,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
        )
        return torch.utils.data.DataLoader(
            ds,
            batch_sampler=sampler,
            collate_fn=collate,
            num_workers=self.recipe.data.workers,
            pin_memory=self.dist.device.type == "cuda",
        )

    def _loop(self, run: TrainState) -> None:
        r = self.recipe
        run.module.train()
        for plan in run.plans:
            if run.result.iterations >= plan.end:
                continue
            run.module.set_stage(ohem=plan.ohem, scl=plan.scl)
            for batch in self.loader(run, plan):
                it = run.result.iterations
                lr = self._lr(plan, it - plan.start, it)
                terms = self.step(run, batch, lr, it, plan)
                it = run.result.iterations = it + 1
                loss = float(terms["loss"])
                run.result.losses.append((it, loss))
                run.log.iteration_done(loss, lr, plan.name)
                if it % r.run.log_every == 0 or it == plan.end:
                    seconds = run.log.window_seconds_per_iteration()
                    scalars = {**terms, "lr": lr, "seconds_per_iteration": seconds}
                    run.log.scalars("train", scalars, it)
                if (r.run.checkpoint_every and it % r.run.checkpoint_every == 0) or it == plan.end:
                    self._checkpoint(run, it, plan.index)
                if (r.run.val_every and it % r.run.val_every == 0) or it == plan.end:
                    self._validate(run, it)
                run.log.pause_done()

    def step(
        self, run: TrainState, batch: dict[str, Any], lr: float, it: int, plan: StagePlan
    ) -> dict[str, float]:
        """One SGD step of iteration ``it``; returns the loss terms as floats. Raises
        :class:`DivergenceError`."""
        for g in run.optimizer.param_groups:
            g["lr"] = lr
        torch.manual_seed(_iteration_seed(self.recipe.run.seed, it, self.dist.rank))
        b = _to_device(batch, self.dist.device)
        if self.channels_last and isinstance(b["image"], torch.Tensor):
            b["image"] = b["image"].contiguous(memory_format=torch.channels_last)
        with self._autocast():
            terms = run.train_module(b["image"], b["semantic"], b.get("targets"))
        loss = terms["loss"]
        values = {k: float(v.detach()) for k, v in terms.items()}
        if D.any_flag(not math.isfinite(values["loss"]), self.dist.device):
            raise DivergenceError(
                f"loss is not finite at iteration {it} (stage {plan.name!r}): {values}; last "
                f"good checkpoint: {run.result.last_checkpoint or 'none written yet'}"
            )
        run.optimizer.zero_grad(set_to_none=True)
        if run.scaler is not None:
            run.scaler.scale(loss).backward()
            run.scaler.unscale_(run.optimizer)
        else:
            loss.backward()
        if self.recipe.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(run.params, self.recipe.optim.grad_clip)
        if run.scaler is not None:
            run.scaler.step(run.optimizer)
            run.scaler.update()
        else:
            run.optimizer.step()
        return values

    def _calibrate_asp(self, module: nn.Module, ds: AugmentedDataset, plan: StagePlan) -> None:
        """Frozen-BN statistics from one batch when the ASP model starts without weights."""
        from seg_perception.networks.panoptic_asp import calibrate_frozen_bn

        keys = D.batch_keys(
            0,
            dataset_len=len(ds),
            batch_size=self.recipe.data.batch_size,
            seed=self.recipe.run.seed,
            stage=plan.index,
        )
        images = [ds[k]["image"].to(self.dist.device) for k in keys]
        calibrate_frozen_bn(module.net, images)  # type: ignore[arg-type]


@dataclass
class TrainState:
    """Everything a running training holds (:meth:`Trainer.setup`)."""

    module: Any  # SemanticTrainModule | PanopticTrainModule (unwrapped)
    train_module: nn.Module  # the module called in training: ``module`` or its DDP wrapper
    optimizer: torch.optim.Optimizer
    scaler: Any
    params: list[nn.Parameter]
    datasets: dict[str, AugmentedDataset]
    plans: list[StagePlan]
    val_set: Any
    log: RunLog
    result: TrainResult
