package org.qwenedge.demo

import java.io.Closeable
import java.io.File
import org.pytorch.executorch.extension.llm.LlmCallback
import org.pytorch.executorch.extension.llm.LlmGenerationConfig
import org.pytorch.executorch.extension.llm.LlmModule
import org.qwenedge.demo.core.BundleException
import org.qwenedge.demo.core.BundleFiles
import org.qwenedge.demo.core.GenerationStats
import org.qwenedge.demo.core.Manifest
import org.qwenedge.demo.core.Sampling
import org.qwenedge.demo.core.SelfCheck
import org.qwenedge.demo.core.TokenDecoder

/**
 * The bundle's .pte driven by ExecuTorch's stock LLM runner (`LlmModule`): load, generate with
 * streaming, self-check. Everything here runs on one background thread, except [stop].
 */
class Engine(private val bundleDir: File, private val manifest: Manifest) : Closeable {
  private val module: LlmModule

  init {
    val program = BundleFiles.resolve(bundleDir, manifest.programFiles[0])
    // The exporter writes the weights to one external file (model.ptd) beside the program.
    val data = manifest.programFiles.drop(1).map { BundleFiles.resolve(bundleDir, it).path }
    if (data.size > 1) {
      throw BundleException("the pte artifact has ${data.size} data files; this app passes the runner one")
    }
    val tokenizer = BundleFiles.resolve(bundleDir, manifest.tokenizerJson())
    // A module temperature of -1 lets each generate() call choose its own (chat vs self-check).
    module = LlmModule(LlmModule.MODEL_TYPE_TEXT, program.path, tokenizer.path, PER_CALL_TEMPERATURE,
        data.singleOrNull())
    // load() reports failure by its status, not by throwing: a program calling a kernel this build of
    // ExecuTorch lacks (a `--pte-kernels llm` bundle without the LLM kernels) would otherwise fail later,
    // at the first generate().
    val status = module.load()
    if (status != 0) {
      module.close()
      throw BundleException("ExecuTorch could not load ${program.name} (error 0x${Integer.toHexString(status)}); " +
          "check that this app's ExecuTorch matches the bundle's toolchain.executorch and links every kernel " +
          "listed in the manifest's kernels_required")
    }
  }

  /**
   * Generate from [prompt] at the runner's current position, streaming each piece to [onPiece];
   * stops after [Sampling.maxNewTokens] pieces. [seqLen] bounds prompt plus reply (-1: the rest of
   * the context). Returns the runner's statistics.
   */
  fun generate(prompt: String, sampling: Sampling, seqLen: Int, onPiece: (String) -> Unit): GenerationStats {
    var statsJson: String? = null
    var error: String? = null
    var pieces = 0
    val config = LlmGenerationConfig.create()
        .echo(false)
        .seqLen(seqLen)
        .temperature(sampling.temperature)
        .build()
    module.generate(prompt, config, object : LlmCallback {
      override fun onResult(result: String) {
        onPiece(result)
        if (++pieces >= sampling.maxNewTokens) module.stop()
      }

      override fun onStats(stats: String) {
        statsJson = stats
      }

      override fun onError(errorCode: Int, message: String) {
        error = "ExecuTorch error $errorCode: $message"
      }
    })
    error?.let { throw IllegalStateException(it) }
    return GenerationStats.parse(statsJson ?: throw IllegalStateException("the runner reported no statistics"))
  }

  /** Greedy-decode the bundle's reference prompt and compare with the reference tokens. */
  fun selfCheck(): SelfCheck.Result {
    val check = SelfCheck.load(BundleFiles.resolve(bundleDir, manifest.selfcheck))
    val decoder = TokenDecoder.load(BundleFiles.resolve(bundleDir, manifest.tokenizerJson()), check.idsToDecode())
    val text = StringBuilder()
    module.resetContext()
    try {
      val stats = generate(check.prompt(), Sampling.greedy(check.maxNewTokens), check.seqLen()) { text.append(it) }
      return check.evaluate(decoder, text.toString(), stats)
    } finally {
      module.resetContext()
    }
  }

  /** Forget the conversation: the next call starts at position 0. */
  fun resetContext() = module.resetContext()

  /** Ask a running [generate] to stop after its current token; safe from any thread. */
  fun stop() = module.stop()

  override fun close() = module.close()

  private companion object {
    const val PER_CALL_TEMPERATURE = -1f
  }
}
