package org.qwenedge.demo.core;

final class SamplingAndStatsTest {
  private SamplingAndStatsTest() {}

  /** What ExecuTorch's runner passes to LlmCallback.onStats (extension/llm/runner/stats.h). */
  static final String STATS = "{\"prompt_tokens\":12,\"generated_tokens\":15,\"model_load_start_ms\":1000,"
      + "\"model_load_end_ms\":1400,\"inference_start_ms\":1500,\"inference_end_ms\":2050,"
      + "\"prompt_eval_end_ms\":1550,\"first_token_ms\":1550,\"aggregate_sampling_time_ms\":3,"
      + "\"SCALING_FACTOR_UNITS_PER_SECOND\":1000}";

  static void testSamplingSettingsAreChecked() {
    Sampling s = Sampling.of(0.7f, 128);
    Check.equal(0.7f, s.temperature, "temperature");
    Check.equal(128, s.maxNewTokens, "reply limit");
    Check.isTrue(Sampling.greedy(16).isGreedy(), "greedy");
    Check.equal("greedy, up to 16 tokens", Sampling.greedy(16).toString(), "description");
    Check.isTrue(!Sampling.CHAT.isGreedy(), "chat samples");
  }

  static void testOutOfRangeSettingsSayTheRange() {
    Check.raises(IllegalArgumentException.class, () -> Sampling.of(-0.1f, 16), "temperature -0.1", "0 (greedy) to 2.0");
    Check.raises(IllegalArgumentException.class, () -> Sampling.of(Float.NaN, 16), "temperature NaN");
    Check.raises(IllegalArgumentException.class, () -> Sampling.of(2.5f, 16), "temperature 2.5");
    Check.raises(IllegalArgumentException.class, () -> Sampling.of(1f, 0), "max_new_tokens 0: use 1 to 4096");
    Check.raises(IllegalArgumentException.class, () -> Sampling.of(1f, 5000), "max_new_tokens 5000");
  }

  static void testRunnerStatisticsGiveTokensPerSecond() {
    GenerationStats s = GenerationStats.parse(STATS);
    Check.equal(12L, s.promptTokens, "prompt tokens");
    Check.equal(240.0, s.prefillTokensPerSecond(), "12 tokens in 50 ms");
    Check.equal(30.0, s.decodeTokensPerSecond(), "15 tokens in 500 ms");
    Check.equal(27L, s.positionsUsed(), "positions");
    Check.equal("prefill 12 tok, 240.0 tok/s \u00b7 decode 15 tok, 30.0 tok/s", s.summary(), "summary");
  }

  static void testUnmeasuredRatesShowADash() {
    GenerationStats s = new GenerationStats(3, 0, 10, 10, 10);
    Check.isTrue(Double.isNaN(s.decodeTokensPerSecond()), "no time, no rate");
    Check.equal("prefill 3 tok, - tok/s \u00b7 decode 0 tok, - tok/s", s.summary(), "summary");
  }

  static void testMalformedStatisticsAreNamed() {
    Check.raises(BundleException.class, () -> GenerationStats.parse("{\"prompt_tokens\":1}"),
        "runner statistics: generated_tokens is missing or not an integer", "update GenerationStats");
    Check.raises(BundleException.class, () -> GenerationStats.parse("PyTorchObserver {}"), "not valid JSON");
  }
}
