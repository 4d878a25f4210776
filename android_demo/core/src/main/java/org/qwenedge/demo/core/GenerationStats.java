package org.qwenedge.demo.core;

import java.util.Locale;

/**
 * The runner's statistics for one {@code generate} call ({@code LlmCallback.onStats}, a JSON object
 * written by ExecuTorch's extension/llm/runner/stats.h), and the rates shown to the user.
 *
 * <p>Prefill rate: prompt tokens over (prompt_eval_end - inference_start), which includes
 * tokenizing. Decode rate: generated tokens over (inference_end - prompt_eval_end); the runner counts
 * in {@code generated_tokens} the decode steps it ran, each one forward call of one token.
 */
public final class GenerationStats {
  private static final String HINT = "the ExecuTorch runner's statistics changed; update GenerationStats";

  public final long promptTokens;
  public final long generatedTokens;
  public final long inferenceStartMs;
  public final long promptEvalEndMs;
  public final long inferenceEndMs;

  public GenerationStats(long promptTokens, long generatedTokens, long inferenceStartMs, long promptEvalEndMs,
      long inferenceEndMs) {
    this.promptTokens = promptTokens;
    this.generatedTokens = generatedTokens;
    this.inferenceStartMs = inferenceStartMs;
    this.promptEvalEndMs = promptEvalEndMs;
    this.inferenceEndMs = inferenceEndMs;
  }

  public static GenerationStats parse(String json) {
    Object value;
    try {
      value = Json.parse(json);
    } catch (JsonException e) {
      throw new BundleException("runner statistics: not valid JSON (" + e.getMessage() + "); " + HINT, e);
    }
    Node root = Node.root("runner statistics", value, HINT);
    return new GenerationStats(root.get("prompt_tokens").longValue(), root.get("generated_tokens").longValue(),
        root.get("inference_start_ms").longValue(), root.get("prompt_eval_end_ms").longValue(),
        root.get("inference_end_ms").longValue());
  }

  /** Prompt tokens per second, or NaN when the prefill took no measurable time. */
  public double prefillTokensPerSecond() {
    return rate(promptTokens, promptEvalEndMs - inferenceStartMs);
  }

  /** Generated tokens per second after the prompt, or NaN when nothing was measured. */
  public double decodeTokensPerSecond() {
    return rate(generatedTokens, inferenceEndMs - promptEvalEndMs);
  }

  /** Prompt and reply positions this call added to the runner's context. */
  public long positionsUsed() {
    return promptTokens + generatedTokens;
  }

  /** "prefill 12 tok, 240.0 tok/s · decode 16 tok, 31.2 tok/s" ("-" for an unmeasured rate). */
  public String summary() {
    return "prefill " + promptTokens + " tok, " + format(prefillTokensPerSecond()) + " tok/s \u00b7 decode "
        + generatedTokens + " tok, " + format(decodeTokensPerSecond()) + " tok/s";
  }

  private static double rate(long tokens, long millis) {
    return millis > 0 ? tokens * 1000.0 / millis : Double.NaN;
  }

  private static String format(double rate) {
    return Double.isNaN(rate) ? "-" : String.format(Locale.ROOT, "%.1f", rate);
  }
}
