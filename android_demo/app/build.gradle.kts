import org.jetbrains.kotlin.gradle.dsl.JvmTarget

plugins {
    id("com.android.application")
    id("org.jetbrains.kotlin.android")
}

val executorchVersion: String by project

android {
    namespace = "org.qwenedge.demo"
    compileSdk = 35

    defaultConfig {
        applicationId = "org.qwenedge.demo"
        minSdk = 26
        targetSdk = 35
        versionCode = 1
        versionName = "1.0"
    }

    buildTypes {
        release {
            isMinifyEnabled = false
        }
    }

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }

    // A bundle packaged as assets is copied to disk on first launch; stored, it copies faster.
    androidResources {
        noCompress += listOf("pte", "ptd")
    }
}

kotlin {
    compilerOptions {
        jvmTarget.set(JvmTarget.JVM_17)
    }
}

dependencies {
    implementation(project(":core"))
    // ExecuTorch runtime with XNNPACK and the LLM runner (LlmModule), as published on Maven Central.
    implementation("org.pytorch:executorch-android:$executorchVersion")
    // The JNI glue ExecuTorch's API is declared with (the version ExecuTorch builds against).
    implementation("com.facebook.fbjni:fbjni:0.7.0")
}
