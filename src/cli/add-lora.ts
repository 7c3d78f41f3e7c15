/** edgellm add-lora (see `edgellm add-lora --help`). */
import type { Command } from 'commander';
import { UsageError } from '../core/errors.js';
import { cliContext } from './progress.js';
import { loadModelHar, addAdapterToHar } from '../../formats/har-model.js';
import { loadPeftAdapter } from '../../formats/peft.js';
import { loadHfModel } from '../../formats/hf.js';
import { TextTokenizer } from '../../formats/tokenizer.js';
import { addLoraPass, planAddLora, DEFAULT_ADD_LORA_OPTIONS } from '../../passes/lora/add.js';
import { passContext } from '../../passes/pass.js';
import { int, outputPathCheck, defaultCalibration, calibrationWindows } from './common.js';

/** `edgellm add-lora`: PEFT adapter -> HAR (beside the base, transformed and quantized on its own). */
export function registerAddLora(program: Command): void {
  program
    .command('add-lora')
    .description(
      "add a PEFT LoRA adapter to a HAR: carried through the base's transforms (folded norms, QuaRot), refit at its rank to the W4 base, A and B quantized on their own, the intermediate A·x calibrated for static A8; base weights and other adapters are kept byte for byte",
    )
    .argument('<adapter-dir>', 'PEFT adapter directory (adapter_config.json, adapter_model.safetensors)')
    .requiredOption('--har <model.har>', 'HAR written by `edgellm quantize`')
    .requiredOption('--name <name>', 'adapter name, used by `run/eval --adapter` (letters, digits, _ . + = @ -)')
    .option('-o, --output <out.har>', 'write the result here instead of updating --har in place')
    .option('--lora-bits <n>', 'A/B storage: 8 (int8 symmetric per output channel), 4 (group-wise) or 32 (float)', int('--lora-bits'), DEFAULT_ADD_LORA_OPTIONS.bits)
    .option('--lora-group-size <n>', 'columns per scale for --lora-bits 4', int('--lora-group-size'), DEFAULT_ADD_LORA_OPTIONS.groupSize)
    .option(
      '--calib <file>',
      "calibration data for the refit and the A·x ranges: .txt, .jsonl or .tokens.json; best: text of the adapter's own task, e.g. its training data (default: ../shared c4 calibration windows)",
    )
    .option(
      '--no-refit',
      "keep A and B as trained instead of refitting them (same rank) to absorb the W4 base's error in the adapter's subspace (passes/lora/refit.ts)",
    )
    .option('--calib-samples <n>', 'calibration windows', int('--calib-samples'), 128)
    .option('--seqlen <n>', 'tokens per calibration window (text calibration files)', int('--seqlen'), 256)
    .option('--seed <n>', 'seed of the calibration window sampler', int('--seed'), 0)
    .option('--base-model <hf-dir>', "the base's source checkpoint, for the pre-fold RMSNorm γ when the HAR folded its norms and keeps no fp32 copy (emulation/native)")
    .option('--json', 'print a JSON summary on stdout')
    .action(async (dir: string, o) => {
      const g = program.opts();
      const ctx = cliContext(g);
      const out: string = o.output ?? o.har;
      outputPathCheck(out);
      const t0 = performance.now();
      const { model, info, emulation } = await loadModelHar(o.har, { lazy: true });
      const peft = loadPeftAdapter(dir, model.config, { baseName: info.modelName });
      if (!g.quiet) for (const w of peft.warnings) process.stderr.write(`warning: ${w}\n`);
      let windows: number[][] = [];
      const plan = planAddLora(model, peft.modules.map((m) => m.linear), { refit: o.refit }, emulation.optimized !== undefined);
      if (plan.needsWindows) {
        const calib = o.calib ?? defaultCalibration();
        if (!calib) throw new UsageError('no calibration data for the adapter: pass --calib <file.txt|file.jsonl|file.tokens.json>');
        windows = await calibrationWindows(calib, new TextTokenizer(model.tokenizer), { n: o.calibSamples, seqLen: o.seqlen, seed: o.seed, vocabSize: model.config.vocabSize });
      }
      const bits = o.loraBits as 32 | 8 | 4;
      const native = emulation.native ?? (o.baseModel ? loadHfModel(o.baseModel) : undefined);
      const pass = addLoraPass({ name: o.name, bits, groupSize: o.loraGroupSize, refit: o.refit, peft, sources: { native, optimized: emulation.optimized } });
      const withAdapter = await pass.run(model, passContext(ctx, windows));
      const adapter = withAdapter.adapters![withAdapter.adapters!.length - 1];
      await addAdapterToHar(o.har, out, adapter);
      const bytes = [...adapter.tensors.values()].reduce((s, t) => s + t.load().data.byteLength, 0);
      const summary = {
        output: out,
        adapter: adapter.name,
        r: adapter.r,
        alpha: adapter.alpha,
        bits: adapter.bits,
        modules: adapter.modules.length,
        targets: [...new Set(adapter.modules.map((m) => m.linear.slice(m.linear.lastIndexOf('.') + 1)))],
        transforms: adapter.source.transforms,
        adapterBytes: bytes,
        calibrationWindows: windows.length,
        refit: adapter.source.refit ?? null,
        warnings: peft.warnings,
        seconds: (performance.now() - t0) / 1000,
      };
      const rf = adapter.source.refit;
      if (plan.refitSkipped === 'no-fp32' && !g.quiet)
        process.stderr.write(`warning: ${o.har} keeps no fp32 weights (quantized with --no-emulation-weights): the adapter is not refit to the W4 base\n`);
      if (o.json) process.stdout.write(JSON.stringify(summary, null, 2) + '\n');
      else if (!g.quiet)
        process.stderr.write(
          `added adapter '${adapter.name}' (r ${adapter.r}, ${summary.modules} modules: ${summary.targets.join(', ')}; ${bits === 32 ? 'float' : `${bits}-bit`} A/B, ${(bytes / 1024).toFixed(1)} KiB) to ${out} in ${summary.seconds.toFixed(1)} s` +
            (rf ? `; refit to the W4 base: weighted base-error residual ${(100 * (1 - rf.residualAfter / rf.residualBefore)).toFixed(1)}% lower` : '') +
            '\n',
        );
    });
}
